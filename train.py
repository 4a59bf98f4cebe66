"""Train GPT-2: `python train.py [--preset NAME] [--flag value ...]`, or under `torchrun --standalone --nproc_per_node=N`.

Resumes from the newest checkpoint in --out-dir by itself, or starts from scratch when there is none.
Every flag is a field of gptcore.trainer.TrainConfig, where its default lives; --preset picks a bundle of them.
"""

import argparse
import dataclasses
import sys
import typing

from gptcore.checkpoint import export_model
from gptcore.errors import GPTCoreError
from gptcore.trainer import TRAIN_PRESETS, TrainConfig, build_trainer, destroy_distributed


def parse_args(argv=None) -> tuple[TrainConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quickstart",
                        help=f"bundle of defaults, overridden by flags: {', '.join(TRAIN_PRESETS)} (default: quickstart)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {field.default})")
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
            parser.add_argument(flag, type=base, default=None, metavar=base.__name__.upper(),
                                help=f"(default: {field.default})")
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
