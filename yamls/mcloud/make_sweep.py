"""Write the paper's 1.3B comparison sweep as MosaicML platform job files.

σ² ∈ {1, 4, 16, 64, 256}e-5 for Weight Normalization, σReparam and WeSaR, × seeds 17–21, plus
seeds for Small init and Residual Scaling: 85 jobs, each the shipped
``yamls/pretrain/1b/compare-10b/<method>.yaml`` with command-line overrides.

    python yamls/mcloud/make_sweep.py sweep-jobs/ --save-root s3://<bucket>/wesar-foundry
    for f in sweep-jobs/*.yaml; do mcli run -f "$f"; done

Every job saves and autoresumes in its own ``<save-root>/<run_name>``: an object store, since a
container's disk does not outlive the job. Every job sets ``env_variables: {FSDP_VERSION: '2'}``
(Composer's FSDP2; the WeSaR models refuse its FSDP1). From a pip install, without this
checkout: ``wesar-foundry configs --out wesar-yamls --sweep-save-root s3://<bucket>/wesar-foundry``.
"""

import argparse
from pathlib import Path

from wesar_foundry.commands.paper import write_sweep

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', nargs='?', default='sweep-jobs', type=Path, help='folder for the job files')
    parser.add_argument('--save-root', required=True,
                        help='object store prefix for checkpoints and exports, e.g. s3://<bucket>/wesar-foundry')
    args = parser.parse_args()
    save_root = args.save_root.rstrip('/')
    if not save_root:
        parser.error('--save-root: empty')
    paths = write_sweep(args.out, save_root)
    print(f'wrote {len(paths)} job files to {args.out}/, saving under {save_root}/<run_name>')
