"""``wesar-foundry``: one console script, one subcommand per job (thin wrappers)."""

from __future__ import annotations

import argparse
import sys


def _prepare(args: argparse.Namespace) -> int:
    from wesar_foundry.data import PrepareConfig, prepare
    cfg = PrepareConfig(
        out=args.out, sources=args.source or ['docstrings'], tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        seq_len=args.seq_len, val_percent=args.val_percent, text_field=args.text_field, hf_split=args.hf_split,
        max_docs=args.max_docs, max_chars=args.max_chars, tokenizer_sample_chars=args.tokenizer_sample_chars,
    )
    prepare(cfg, force=args.force)
    return 0


def _export(args: argparse.Namespace) -> int:
    import json

    from wesar_foundry.export import MAX_SHARD_SIZE, export_checkpoint
    out = export_checkpoint(args.checkpoint, args.out_dir, dtype=args.dtype, force=args.force,
                            max_shard_size=args.max_shard_size or MAX_SHARD_SIZE)
    architecture = json.loads((out / 'config.json').read_text())['architectures'][0]
    print(f'wrote a stock {architecture} checkpoint (gates merged) to {out}')
    return 0


def _eval(args: argparse.Namespace) -> int:
    # lm-eval is imported by evaluate(), after the paths are checked.
    from wesar_foundry.commands.eval import (
        TASK_DIR, EvalConfig, evaluate, format_table, lm_eval_command, write_json, write_tasks,
    )
    cfg = EvalConfig(
        model_dir=args.model_dir, tasks=tuple(t for t in (args.tasks or '').split(',') if t),
        wikitext_file=args.wikitext_file, lambada_file=args.lambada_file, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, max_length=args.max_length, limit=args.limit,
        task_dir=args.task_dir or str(TASK_DIR), write_tasks=args.write_tasks,
    )
    if cfg.write_tasks is not None and args.out:
        raise ValueError('--out: with --write-tasks nothing is evaluated here (lm_eval writes its results with --output_path)')
    if cfg.write_tasks is not None:  # write_tasks() and evaluate() each validate cfg first
        out = write_tasks(cfg)
        print(f'wrote the task configs, their data files filled in, to {out}/; evaluate with plain lm-eval:\n  '
              + lm_eval_command(cfg))
        return 0
    result = evaluate(cfg)
    print(format_table(result))
    if args.out:
        write_json(result, args.out)
        print(f'wrote {args.out}')
    return 0


def _plot(args: argparse.Namespace) -> int:
    from wesar_foundry.commands.plot import DEFAULT_MATRICES, plot_runs
    paths = plot_runs(args.metrics, labels=args.label, out=args.out, matrices=args.matrix or DEFAULT_MATRICES,
                      kind=args.kind, title=args.title)
    for path in paths:
        print(path)
    return 0


def _configs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wesar_foundry.files.atomic import staged_dir
    from wesar_foundry.commands.paper import train_command, write_all, write_sweep
    from wesar_foundry.commands.tiny import write_tiny
    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.force:
        raise FileExistsError(f'{out} exists; pass --force to replace it')
    save_root = (args.sweep_save_root or '').rstrip('/')
    if args.sweep_save_root is not None and not save_root:
        raise ValueError('--sweep-save-root: empty; give an object store URI such as s3://<bucket>/<prefix>')
    with staged_dir(out) as tmp:  # the folder appears whole or not at all
        n = len(write_all(tmp)) + len(write_tiny(tmp / 'tiny'))
        if save_root:
            n += len(write_sweep(tmp / 'mcloud' / 'sweep', save_root))
    print(f'wrote {n} files to {out}/: tiny/<family>.yaml (CPU, minutes), pretrain/<size>/<method>-<setting>.yaml, '
          'pretrain/1b/compare-10b/, mcloud/' + (' (sweep jobs in mcloud/sweep/)' if save_root else ''))
    print(f'train a tiny one on this CPU (on ./wesar-data from wesar-foundry prepare):\n  llmfoundry train {out}/tiny/wesar.yaml')
    print('train one on 8 GPUs:\n  ' + '\n  '.join(train_command('1b', f'{out}/pretrain/1b/wesar-rapid.yaml')))
    return 0


def _numbers(text: str, kind: type, option: str) -> list:
    """``'1e-3,3e-3'`` → numbers of ``kind``; an empty or malformed item is an error naming ``option``."""
    try:
        return [kind(x) for x in text.split(',')]
    except ValueError:
        raise ValueError(f'{option} {text!r}: expected comma-separated {kind.__name__}s, e.g. '
                         f'{"17,18" if kind is int else "1e-3,3e-3"}') from None


def _demo(args: argparse.Namespace) -> int:
    from wesar_foundry.commands.demo import DemoConfig, run_demo
    defaults = DemoConfig()
    cfg = DemoConfig(
        out=args.out, data=args.data, sources=args.source or defaults.sources,
        methods=args.methods.split(',') if args.methods else defaults.methods,
        seeds=_numbers(args.seeds, int, '--seeds') if args.seeds else defaults.seeds,
        # `is not None`, not truthiness: --steps 0 / --lr 0 are refused by DemoConfig, not replaced.
        lrs=_numbers(args.lrs, float, '--lrs') if args.lrs is not None else ([args.lr] if args.lr is not None else defaults.lrs),
        steps=args.steps if args.steps is not None else defaults.steps,
        max_chars=args.max_chars if args.max_chars is not None else defaults.max_chars,
    )
    run_demo(cfg)
    return 0


def _coord_check(args: argparse.Namespace) -> int:
    from wesar_foundry.commands.coord_check import CoordCheckConfig, run_coord_check
    cfg = CoordCheckConfig(
        yaml=args.yaml, widths=_numbers(args.widths, int, '--widths'),
        depths=_numbers(args.depths, int, '--depths') if args.depths else None,
        steps=args.steps, seed=args.seed, tol=args.tol, out=args.out, overrides=list(args.overrides),
    )
    run_coord_check(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='wesar-foundry', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('prepare', help='build a BPE tokenizer and train/val MDS datasets for llm-foundry')
    p.add_argument('--out', default='wesar-data',
                   help='output folder (default: wesar-data), or an object store URI such as s3://<bucket>/<prefix>: '
                        'prepared in a temporary folder, then uploaded (shards first, the indexes and prepare.json '
                        'last, so an interrupted upload is never taken for a dataset); S3_ENDPOINT_URL selects an '
                        'S3-compatible store')
    p.add_argument('--source', action='append',
                   help="'docstrings' (default: the stdlib's docstrings, offline), a .txt/.tokens file (documents "
                        "split at blank lines), a .jsonl file, or hf:<name>[:<config>] (streamed); repeatable")
    p.add_argument('--tokenizer', help='use this tokenizer (folder or hub name) instead of training a BPE')
    p.add_argument('--vocab-size', type=int, default=4096)
    p.add_argument('--seq-len', type=int, default=128, help='tokens per MDS sample (>= training max_seq_len)')
    p.add_argument('--val-percent', type=float, default=5.0,
                   help='share of documents for val (by a hash of their text); 0 writes train only, 100 an eval-only '
                        'set (e.g. WikiText); otherwise an empty train or val split is an error')
    p.add_argument('--text-field', help='record field holding the text (default: text, else content)')
    p.add_argument('--hf-split', default='train')
    p.add_argument('--max-docs', type=int, help='documents per source at most (default: no cap)')
    p.add_argument('--max-chars', type=int, help='characters in all at most (default: no cap)')
    p.add_argument('--tokenizer-sample-chars', type=int, default=100_000_000,
                   help='without --tokenizer, the BPE is trained on the train documents among the first this many '
                        'characters (default 100M); all documents are written')
    p.add_argument('--force', action='store_true',
                   help='rebuild even if --out holds a prepared dataset (on an object store: its manifest is deleted '
                        'first, then everything else under --out)')
    p.set_defaults(func=_prepare)

    p = sub.add_parser('export', help='merge a saved Composer checkpoint (sharded folder or .pt) into a stock '
                                      'Hugging Face checkpoint of its architecture',
                       description='Merge a saved Composer checkpoint of a wesar_llama, wesar_hf or wesar_mpt run into '
                                   'the stock Hugging Face checkpoint of its architecture (+ tokenizer): wesar_llama → '
                                   'LlamaForCausalLM; wesar_hf → transformers\' class of its model_type '
                                   '(GPTNeoXForCausalLM, Qwen2ForCausalLM, ...); wesar_mpt → llm-foundry\'s '
                                   'MPTForCausalLM with its modeling code, as hf_checkpointer writes it (load with '
                                   'trust_remote_code=True). On CPU in one process, no GPU needed. Only the model '
                                   'weights and the HF config and tokenizer are loaded, never the optimizer state.')
    p.add_argument('checkpoint',
                   help='a sharded checkpoint folder (<save_folder>/ep<E>-ba<B>, written by FSDP with '
                        'state_dict_type: sharded), a save folder (exports the checkpoint its latest-sharded-rank0 or '
                        'latest-rank0.pt link points to), or a monolithic Composer checkpoint file (.pt); local or on '
                        'an object store (s3://<bucket>/<run>[/ep<E>-ba<B>]: a remote save folder is followed through '
                        'its latest-sharded-rank0.symlink object, and only that checkpoint\'s .metadata and .distcp '
                        'objects are downloaded)')
    p.add_argument('out_dir', help='output folder (written to a temporary folder, renamed at the end)')
    p.add_argument('--dtype', choices=('fp32', 'bf16', 'fp16'),
                   help='dtype of the saved weights (default: the training dtype: fp32, bf16 for amp_bf16)')
    p.add_argument('--max-shard-size',
                   help='largest safetensors file, e.g. 500MB or 5GB (default: 1GB, as llm-foundry\'s hf_checkpointer)')
    p.add_argument('--force', action='store_true', help='replace out_dir if it exists')
    p.set_defaults(func=_export)

    p = sub.add_parser('eval', help="WikiText word perplexity and LAMBADA target-word perplexity via lm-eval "
                                    "(needs the 'eval' extra)")
    p.add_argument('model_dir', nargs='?',
                   help='an exported HF model folder (a stock transformers model + tokenizer); optional with --write-tasks')
    p.add_argument('--wikitext-file', help='offline: a local WikiText split file (wiki.test.tokens or .raw)')
    p.add_argument('--lambada-file', help='offline: a local LAMBADA jsonl ({"text"} or {"context","continuation"})')
    p.add_argument('--tasks', help='stock hub-backed lm-eval tasks, comma-separated: wikitext, lambada_openai, '
                                   'lambada_standard (default: wikitext,lambada_openai when no file is given)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:0, ... (default: cpu)')
    p.add_argument('--dtype', default='float32', help='float32 (default), bfloat16, float16 or auto')
    p.add_argument('--max-length', type=int, help="context window (default: the model's max_position_embeddings)")
    p.add_argument('--limit', type=int, help='only the first N documents per task (a quick check)')
    p.add_argument('--task-dir', default=None,
                   help="folder of the local task configs (default: the installed package's eval_tasks/)")
    p.add_argument('--out', help='also write the results as JSON here')
    p.add_argument('--write-tasks', metavar='DIR',
                   help='evaluate nothing: write the offline task configs with the --wikitext-file/--lambada-file paths '
                        'filled in to the new folder DIR and print the plain `lm_eval --include_path DIR ...` command '
                        '(the shipped task configs are never edited)')
    p.set_defaults(func=_eval)

    p = sub.add_parser('plot', help="the paper's Figure 1 (loss with spikes, update ratios, uniformity) from logged metrics")
    p.add_argument('metrics', nargs='+', help='metrics files: the jsonl logger\'s, Composer file logger text, '
                                              'or W&B / MLflow CSV exports, local or on an object store '
                                              '(s3://<bucket>/<run>/metrics.jsonl); several runs are overlaid')
    p.add_argument('--out', default='fig.png', help='output image; a .png and a .svg are written (default: fig.png)')
    p.add_argument('--label', action='append', help='legend label per metrics file, in order (default: run name)')
    p.add_argument('--matrix', action='append',
                   help="matrices for the ratio panel: <layer>:<role> (layer a number or 'last') or a name regex "
                        "(repeatable; default: last:down and last:up)")
    p.add_argument('--kind', default='auto', choices=['auto', 'effective', 'raw'],
                   help='update ratios of effective matrices W̄ or stored weights (default: effective if logged)')
    p.add_argument('--title')
    p.set_defaults(func=_plot)

    p = sub.add_parser('configs', help="write the tiny CPU train YAMLs, the paper's llm-foundry train YAMLs and MosaicML "
                                       "job files (what the repository's yamls/tiny, yamls/pretrain and yamls/mcloud "
                                       "hold) from the installed package")
    p.add_argument('--out', default='wesar-yamls', help='output folder (default: wesar-yamls)')
    p.add_argument('--sweep-save-root', help='also write the 85 jobs of the 1.3B sigma^2 x seed sweep to '
                                             'mcloud/sweep/, saving under this object store prefix (s3://...)')
    p.add_argument('--force', action='store_true', help='replace --out if it exists')
    p.set_defaults(func=_configs)

    p = sub.add_parser('demo', help='WeSaR vs Small init, each at its own best lr, on this machine (CPU, offline, about 3 min '
                                    'on 2 cores, corpus build included): report folder with plots and a table')
    p.add_argument('--out', default='wesar-report', help='report folder (default: wesar-report)')
    p.add_argument('--data', help="the demo's prepared data folder, built once and reused (default: <out>/data, so "
                                  "wesar-report/data; `prepare` builds the full corpus separately, in wesar-data)")
    p.add_argument('--source', action='append', help="corpus for prepare: 'docstrings' (default), .txt/.jsonl, hf:<name>")
    p.add_argument('--methods', help='comma-separated: small, he, weight_norm, sigma_reparam, residual_scaling, wesar, wesar_auto, multipliers (default: wesar,small)')
    p.add_argument('--seeds', help='comma-separated seeds (default: 17)')
    one_or_sweep = p.add_mutually_exclusive_group()  # both given, one would be silently ignored
    one_or_sweep.add_argument('--lr', type=float, help="one peak learning rate for every method (default: each method at "
                                                       "its own best lr for the demo's shape, from the shipped sweep)")
    one_or_sweep.add_argument('--lrs', help='learning-rate sweep for every method, e.g. 1e-3,3e-3,1e-2: draws held-out loss '
                                            'vs lr per method')
    p.add_argument('--steps', type=int, help='optimizer steps per run (default: 200)')
    p.add_argument('--max-chars', type=int, help="characters of the demo's corpus at most (default: 4000000; "
                                                 "a smaller corpus builds faster, and leaves the shipped sweep's shape)")
    p.set_defaults(func=_demo)

    from wesar_foundry.core.coords import RULE as COORD_RULE  # stdlib only: the CLI still starts without torch
    p = sub.add_parser(
        'coord-check', help='coordinate check of a train YAML before a large run: update ratios and activation RMS '
                            'per matrix role against width (a few steps per width), and the roles that drift',
        description='The coordinate check of muP (Yang et al. 2022) on your own llm-foundry YAML (model wesar_llama '
                    'or wesar_hf): for each width (and depth) the model is resized (head dim kept; wesar_llama: '
                    'd_model, n_heads, MLP by its expansion_ratio; wesar_hf: hidden_size, heads, kv heads, '
                    'intermediate_size in proportion) and trained --steps steps through llm-foundry\'s train() on '
                    'the YAML\'s data, at a constant lr (optimizer.lr), without eval, checkpoints, exports or the '
                    'YAML\'s callbacks, in one process. Per role it records the update ratio (update_ratio_monitor, '
                    'effective matrices) and the RMS of the matrices\' outputs at every step, writes '
                    '<out>/coords.json and <out>/coords-<quantity>.png/.svg (value against width, log-log, one line '
                    'per role, step 1 and the last step), and prints the slopes. Rule: ' + COORD_RULE + '.')
    p.add_argument('yaml', help='the llm-foundry train YAML')
    p.add_argument('overrides', nargs='*', help='dotlist overrides as llmfoundry train takes them, right after the YAML '
                                                '(options go before the YAML or after the overrides), e.g. '
                                                'precision=fp32 variables.data_local=./wesar-data')
    p.add_argument('--widths', default='64,128,256,512',
                   help='comma-separated widths, at least two, each a multiple of the head dim (default: 64,128,256,512)')
    p.add_argument('--depths', help="comma-separated layer counts (default: the YAML's); with several, slopes against "
                                    'depth are reported too')
    p.add_argument('--steps', type=int, default=5, help='optimizer steps per run, >= 2 (default: 5)')
    p.add_argument('--seed', type=int, default=17, help='seed of every run (default: 17)')
    p.add_argument('--tol', type=float, default=0.25,
                   help='a role drifts when |slope of ln(value) against ln(width)| > tol (default: 0.25)')
    p.add_argument('--out', default='coord-check', help='output folder (default: coord-check)')
    p.set_defaults(func=_coord_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f'wesar-foundry {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
