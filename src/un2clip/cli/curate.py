"""`un2clip` data commands: curate (ALIGN filters, MetaCLIP balancing, CLIP-score filtering), train-filter (DFN),
knowledge (K-LITE definitions for zero-shot prompts)."""

from __future__ import annotations

import argparse

from un2clip.cli.types import (
    OVERWRITE_HELP,
    finite_float,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "curate", help="filter / balance a pool of image-text pairs (ALIGN, MetaCLIP, CLIP score)",
        description="Stream a CSV/TSV or webdataset pool of image-text pairs, shard by shard (resumable: run the "
                    "same command again), through the chosen methods, in this order: unreadable images and empty "
                    "captions dropped; ALIGN's filters; MetaCLIP matching (pairs matching no entry dropped) and "
                    "balancing; the score filter. Writes the kept pairs in the pool's format to OUT plus "
                    "OUT/curate_summary.json (counts in, out, per reason, per metadata entry, entry-count "
                    "histogram before/after balancing).")
    p.add_argument("pool", help="CSV/TSV table (image path + caption columns) or webdataset shards (a .tar, a "
                                "folder of .tar files, or a pattern like shards/{00000..00010}.tar)")
    p.add_argument("--output", required=True, metavar="OUT", help="folder of the curated pool and its summary")
    p.add_argument("--image-column", help="table column of image paths (webdataset: image member extensions)")
    p.add_argument("--caption-column", help="table column of captions (webdataset: caption member extension)")
    p.add_argument("--rows-per-shard", type=positive_int, default=10000,
                   help="rows of a table processed (and resumed) as one unit (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancing draws (default 0)")
    p.add_argument("--fresh", action="store_true", help="recompute everything instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("ALIGN filters (Jia et al. 2021; a threshold of 0 switches its rule off)")
    g.add_argument("--filters", choices=["align"], help="apply ALIGN's simple filters")
    g.add_argument("--min-side", type=nonneg_int, default=200, help="keep images whose shorter side is larger (default 200)")
    g.add_argument("--max-aspect", type=nonneg_float, default=3.0, help="keep aspect ratios smaller than this (default 3)")
    g.add_argument("--min-words", type=nonneg_int, default=3, help="drop captions of fewer unigrams (default 3)")
    g.add_argument("--max-words", type=nonneg_int, default=20, help="drop captions of more unigrams (default 20)")
    g.add_argument("--max-caption-shared", type=nonneg_int, default=10,
                   help="drop captions shared by more images than this (default 10)")
    g.add_argument("--boilerplate", metavar="FILE",
                   help="captions that are only one of these lines are dropped (default: a built-in list with "
                        "'image', 'photo', 'untitled', ...)")
    g = p.add_argument_group("MetaCLIP (Xu et al. 2023)")
    g.add_argument("--metadata", metavar="FILE",
                   help="entries (a JSON list like MetaCLIP's metadata.json, or one a line): keep pairs whose "
                        "caption contains an entry (whole words, case-sensitive)")
    g.add_argument("--balance-t", type=positive_float, metavar="T",
                   help="balance: an entry matched c times keeps each pair with probability min(1, T/c); a pair "
                        "is kept if any of its entries keeps it (MetaCLIP 400M: 20000)")
    g = p.add_argument_group("CLIP-score / DFN filtering")
    g.add_argument("--score-model", metavar="M",
                   help="scoring model: preset, folder, Hub id, run directory (e.g. of `un2clip train-filter`)")
    g.add_argument("--keep-fraction", type=fraction,
                   help="keep exactly this top fraction by score, in [0, 1] (DataComp: 0.3)")
    g.add_argument("--min-score", type=finite_float, help="keep pairs whose image-text cosine is at least this")
    g.add_argument("--batch-size", type=positive_int, default=256, help="pairs per scoring batch (default 256)")
    g.add_argument("--device", help="device of the scoring model (default: cuda if available)")

    def run(args: argparse.Namespace) -> int:
        import json

        from un2clip.curate import AlignRules, CurateOptions, curate, read_metadata

        align = None
        if args.filters == "align":
            extra = {}
            if args.boilerplate:
                from un2clip.eval.encoder.zeroshot import read_lines

                extra["boilerplate"] = tuple(read_lines(args.boilerplate))
            align = AlignRules(min_side=args.min_side, max_aspect=args.max_aspect, min_words=args.min_words,
                               max_words=args.max_words, max_caption_shared=args.max_caption_shared, **extra)
        opts = CurateOptions(align=align, metadata=read_metadata(args.metadata) if args.metadata else None,
                             balance_t=args.balance_t, score_model=args.score_model,
                             keep_fraction=args.keep_fraction, min_score=args.min_score, seed=args.seed,
                             batch_size=args.batch_size, rows_per_shard=args.rows_per_shard, device=args.device,
                             image_column=args.image_column, caption_column=args.caption_column)
        summary = curate(args.pool, args.output, opts, progress=not args.no_progress, fresh=args.fresh)
        short = {k: summary[k] for k in ("n_in", "n_out", "dropped", "align_tripped", "entry_count_histogram",
                                         "score_threshold") if summary.get(k) is not None}
        print(json.dumps(short, indent=1))
        print(f"kept {summary['n_out']} of {summary['n_in']} pairs -> {args.output} (summary: "
              f"{args.output}/curate_summary.json)")
        return 0

    p.set_defaults(func=run)


def _add_train_filter(sub: argparse._SubParsersAction) -> None:
    from un2clip.cli.train import _add_train_flags, _run_training

    p = sub.add_parser(
        "train-filter", help="DFN: train a small filtering CLIP on trusted pairs (then curate --score-model RUN)",
        description="Data Filtering Networks (Fang et al. 2023): contrastive pre-training (the `pretrain` "
                    "objective and training loop) of a small CLIP on a trusted, high-quality subset; its "
                    "image-text scores then filter a pool: `un2clip curate POOL --score-model RUN --keep-fraction "
                    "0.3`. With --pool and --curate-output that curation runs right after training.")
    _add_train_flags(p)
    p.add_argument("--hard-negatives", metavar="FILE", help="NegCLIP-style hard-negative word groups (as pretrain)")
    p.add_argument("--pool", help="then score and filter this pool with the trained filter")
    p.add_argument("--curate-output", metavar="OUT", help="where the filtered pool goes (with --pool)")
    p.add_argument("--keep-fraction", type=fraction, default=0.3,
                   help="top fraction the filter keeps, in [0, 1] (default 0.3)")

    def run(args: argparse.Namespace) -> int:
        if (args.pool is None) != (args.curate_output is None):
            raise ValueError("--pool and --curate-output go together")
        if args.data is None and args.config is None and args.resume is None:
            raise ValueError("give --data: the trusted image-text pairs the filter learns from")
        code = _run_training(args, "contrastive", {"hard_negatives": args.hard_negatives})
        from pathlib import Path

        run_dir = Path(args.resume or args.output or "runs/finetune")
        if args.pool:
            from un2clip.curate import CurateOptions, curate

            summary = curate(args.pool, args.curate_output,
                             CurateOptions(score_model=str(run_dir), keep_fraction=args.keep_fraction),
                             progress=not args.no_progress)
            print(f"kept {summary['n_out']} of {summary['n_in']} pairs -> {args.curate_output}")
        else:
            print(f"filter a pool with: un2clip curate POOL --output OUT --score-model {run_dir} "
                  f"--keep-fraction {args.keep_fraction}")
        return code

    p.set_defaults(func=run)


def _add_knowledge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "knowledge", help="K-LITE: a class -> definition TSV from WordNet glosses (for eval zeroshot --knowledge)",
        description="Write CLASS<TAB>DEFINITION lines for the class names of a zero-shot set, from WordNet "
                    "glosses (the `wn` package with an installed English WordNet, or the Debian `wordnet` "
                    "database files); classes without a gloss are left out and listed.")
    p.add_argument("classnames", help="a file with one class name a line, or a zero-shot dataset folder")
    p.add_argument("--output", required=True, help="TSV to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.eval.encoder.knowledge import wordnet_definitions, write_knowledge
        from un2clip.eval.encoder.zeroshot import load_classification_set, read_lines
        from un2clip.files import check_output

        # the input and the output first: a wrong class list is said before a missing WordNet
        source = Path(args.classnames)
        names = (load_classification_set(source).classnames if source.is_dir() else read_lines(source))
        if not names:
            raise ValueError(f"{source} holds no class names (one a line expected)")
        check_output(args.output, inputs=[source], overwrite=args.overwrite)
        found = wordnet_definitions(names)
        write_knowledge(args.output, found)
        missing = [n for n in names if n not in found]
        print(f"wrote {len(found)} definitions to {args.output}" +
              (f"; no gloss for {len(missing)}: {', '.join(missing[:10])}" if missing else ""))
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_curate, _add_train_filter, _add_knowledge]
