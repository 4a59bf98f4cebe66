"""Train GPT-2: `python train.py [--preset NAME] [--flag value ...]`, or under `torchrun --standalone --nproc_per_node=N`.

Resumes from the newest checkpoint in --out-dir by itself, or starts from scratch when there is none.
Every flag is a field of gptcore.train.TrainConfig, of its model (gptcore.GPTConfig) or of its trainer
(gptcore.train.TrainerConfig). --preset sets a bundle of them, the dataclasses' defaults fill in the rest, and flags
override both. The defaults shown below are those of the default preset, quickstart.

Paths: a path given in a flag is relative to the working directory; the presets' --data and --out-dir (data/<name>,
out/<preset>) are anchored to the repository, where data/prepare.py writes, wherever this is run from.
"""

import argparse
import os
import sys
import typing

from gptcore.errors import GPTCoreError
from gptcore.train import TRAIN_PRESETS, TrainConfig
from gptcore.train.config import DEFAULT_PRESET, PRESET_TIMES, flat_fields
from gptcore.train.recipe import train

ROOT = os.path.dirname(os.path.abspath(__file__))
OLD_SPELLINGS = {"max_iters": "--max-steps", "warmup_iters": "--warmup-steps", "grad_norm_clip": "--grad-clip"}


def parse_args(argv=None) -> tuple[TrainConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    times = "; ".join(f"{name}: {cpu} on a 2-core CPU, {gpu} on one GPU" for name, (cpu, gpu) in PRESET_TIMES.items())
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"bundle of defaults, overridden by flags: {', '.join(TRAIN_PRESETS)} "
                             f"(default: {DEFAULT_PRESET}). Expected wall time: {times}")
    defaults = TrainConfig()
    preset_fields = {name for preset in TRAIN_PRESETS.values() for name in preset}
    # what a flag left out actually gets without --preset: the default preset's value, else the dataclass default
    # (flags themselves default to None, so that from_preset can tell which settings were given)
    for name, part in flat_fields().items():
        holder = getattr(defaults, part) if part else defaults
        kind = typing.get_type_hints(type(holder))[name]
        default = TRAIN_PRESETS[DEFAULT_PRESET].get(name, getattr(holder, name))
        shown = f"(default: {default}{'; other presets may change it' if name in preset_fields else ''})"
        flags = ["--" + name.replace("_", "-"), *([OLD_SPELLINGS[name]] if name in OLD_SPELLINGS else [])]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        if kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=shown)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(*flags, dest=name, type=base, nargs=2, default=None, metavar=base.__name__.upper(),
                                help=shown)
        else:
            parser.add_argument(*flags, dest=name, type=base, default=None, metavar=base.__name__.upper(), help=shown)
    parser.add_argument("--export", metavar="PATH",
                        help="when training completes, also write a weights-only bf16 checkpoint here (for sample.py)")
    args = vars(parser.parse_args(argv))
    preset, export = args.pop("preset"), args.pop("export")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None}
    config = TrainConfig.from_preset(preset, **settings)
    for name in ("data", "out_dir"):  # a default is the repository's folder; a flag's path is the working directory's
        if name not in settings:
            setattr(config, name, os.path.relpath(os.path.join(ROOT, getattr(config, name))))
    return config, export


def main(argv=None):
    try:
        config, export = parse_args(argv)
        train(config, export)
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
