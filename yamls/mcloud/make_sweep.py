"""Write the paper's 1.3B comparison sweep as MosaicML platform job files.

σ² ∈ {1, 4, 16, 64, 256}e-5 for Weight Normalization, σReparam and WeSaR, × seeds 17–21, plus
seeds for Small init and Residual Scaling: 85 jobs, each the shipped
``yamls/pretrain/1b/compare-10b/<method>.yaml`` with command-line overrides.

    python yamls/mcloud/make_sweep.py sweep-jobs/
    for f in sweep-jobs/*.yaml; do mcli run -f "$f"; done
"""

import sys
from pathlib import Path

from wesar_foundry.paper import write_sweep

if __name__ == '__main__':
    out = Path(sys.argv[1] if len(sys.argv) > 1 else 'sweep-jobs')
    paths = write_sweep(out)
    print(f'wrote {len(paths)} job files to {out}/')
