"""Train GPT-2: `python train.py [--preset NAME] [--flag value ...]`, or under `torchrun --standalone --nproc_per_node=N`.

Resumes from the newest checkpoint in --out-dir by itself, or starts from scratch when there is none.
Every flag is a field of gptcore.trainer.TrainConfig. --preset sets a bundle of them, TrainConfig's defaults fill
in the rest, and flags override both. The defaults shown below are those of the default preset, quickstart.
"""

import argparse
import dataclasses
import sys
import typing

from gptcore.checkpoint import export_model
from gptcore.errors import GPTCoreError
from gptcore.trainer import TRAIN_PRESETS, TrainConfig, build_trainer, destroy_distributed

DEFAULT_PRESET = "quickstart"


def parse_args(argv=None) -> tuple[TrainConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"bundle of defaults, overridden by flags: {', '.join(TRAIN_PRESETS)} "
                             f"(default: {DEFAULT_PRESET})")
    hints = typing.get_type_hints(TrainConfig)
    # what a flag left out actually gets without --preset: the default preset's value, else TrainConfig's
    # (flags themselves default to None, so that from_preset can tell which settings were given)
    preset_fields = {name for preset in TRAIN_PRESETS.values() for name in preset}
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        default = TRAIN_PRESETS[DEFAULT_PRESET].get(field.name, field.default)
        shown = f"(default: {default}{'; other presets may change it' if field.name in preset_fields else ''})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=shown)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
            parser.add_argument(flag, type=base, default=None, metavar=base.__name__.upper(), help=shown)
    parser.add_argument("--export", metavar="PATH",
                        help="when training completes, also write a weights-only bf16 checkpoint here (for sample.py)")
    args = vars(parser.parse_args(argv))
    preset, export = args.pop("preset"), args.pop("export")
    return TrainConfig.from_preset(preset, **{k: v for k, v in args.items() if v is not None}), export


def main():
    try:
        config, export = parse_args()
        trainer = build_trainer(config)
        trainer.run()
        if export and trainer.dist.is_main and trainer.step == config.max_steps:
            export_model(trainer.raw_model, trainer.tokenizer, trainer.step, export)
            print(f"exported the model to {export}")
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
