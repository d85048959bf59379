"""``linfit zoo list``, ``linfit zoo build`` and ``linfit zoo import``: the zoo's sub-commands, added to linfit's
parser by ``add_commands(subparsers)`` (``linfit.cli`` calls it)."""

from __future__ import annotations

import argparse


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(f"{v:{w}s}" for v, w in zip(row, widths)).rstrip())


def _list(args: argparse.Namespace) -> int:
    from linfit.zoo import manifest
    from linfit.zoo.source import load_zoo

    if args.zoo == "embedded":
        rows = [(m["name"], m["arch"], m["kind"], m["domain"], str(m["num_classes"]),
                 f"{100 * m['source_accuracy']:.1f}%") for m in manifest(args.weights_dir)["models"]]
        _print_table(("model", "architecture", "kind", "source domain", "source classes", "source accuracy"), rows)
        print("(the generalist is the reference model; source accuracy: top-1 on the source domain's test split)")
        return 0
    entries = load_zoo(args.zoo, weights_dir=args.weights_dir)
    rows = [(e.name + (" *" if e.reference else ""), e.architecture, e.format, e.source_domain or "-",
             f"{e.preprocessing.input_size}px {e.preprocessing.channel_order}", str(e.path)) for e in entries]
    _print_table(("model", "architecture", "format", "source domain", "input", "checkpoint"), rows)
    if any(e.reference for e in entries):
        print("(* the reference model)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from linfit.zoo import WEIGHTS_DIR, TrainConfig, build

    config = TrainConfig() if args.epochs is None else TrainConfig(epochs=args.epochs)
    manifest = build(args.out or WEIGHTS_DIR, seed=args.seed, progress=not args.quiet, only=args.only or None,
                     config=config)
    print(f"{len(manifest['models'])} models, {manifest['build_seconds']:.0f} s of training")
    return 0


def _import(args: argparse.Namespace) -> int:
    from linfit.zoo.imagenet import import_checkpoint

    entry = import_checkpoint(args.path, args.arch, name=args.name, user_dir=args.zoo_dir)
    print(f"{entry.name}  {entry.arch}  {entry.format}  sha256 {entry.sha256}\n-> {entry.path}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``zoo list``, ``zoo build`` and ``zoo import`` to an ``argparse`` sub-parser collection."""
    zoo = subparsers.add_parser("zoo", help="model zoos: list one, build the embedded one, import ImageNet checkpoints")
    zoo = zoo.add_subparsers(dest="zoo_command", required=True)
    lst = zoo.add_parser("list", help="a zoo's models (the embedded zoo's with kind, source domain and accuracy)")
    lst.add_argument("--zoo", default="embedded", metavar="embedded|imagenet|FILE.toml",
                     help="the zoo to list, as `linfit select --zoo` takes it (default: embedded)")
    lst.add_argument("--weights-dir", default=None, help="a build of the embedded zoo (default: the committed zoo)")
    lst.set_defaults(run=_list)
    bld = zoo.add_parser("build", help="train the zoo models missing from --out (resumable, seeded)")
    bld.add_argument("--out", default=None, help="output folder (default: linfit/zoo/weights)")
    bld.add_argument("--seed", type=int, default=0)
    bld.add_argument("--only", nargs="*", help="model or group names, e.g. resnet8/mnist/scratch resnet8/multibn")
    bld.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    bld.add_argument("--quiet", action="store_true", help="no progress bars")
    bld.set_defaults(run=_build)
    imp = zoo.add_parser("import", help="copy a downloaded ImageNet checkpoint into the user zoo (with its sha256)")
    imp.add_argument("path", help="a torch.save file (.pt/.pth), a .safetensors file (torchvision/timm names) or a "
                                  "pickle of numpy arrays")
    imp.add_argument("--arch", required=True, help="its architecture, a key of linfit.zoo.imagenet.PREPROCESSING")
    imp.add_argument("--name", default=None, help="entry name user/<NAME> (default: the file name without suffix)")
    imp.add_argument("--zoo-dir", default=None,
                     help="user zoo folder (default: $LINFIT_ZOO_DIR or ~/.cache/linfit/zoo)")
    imp.set_defaults(run=_import)
