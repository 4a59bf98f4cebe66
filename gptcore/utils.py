"""minGPT's helpers for project scripts: set_seed, setup_logging, and CfgNode, the config tree.

A minGPT-style script builds its config as a tree: CfgNode() sections such as `system`, holding plain values or
the configs that GPT.get_default_config(), Trainer.get_default_config() and a dataset's get_default_config()
return. Those configs are dataclasses: each declares its own fields, defaults and checks, once. CfgNode is only
the tree around them: it reads overrides from the command line (--trainer.batch_size=32), prints itself, and
turns into plain JSON for the run's work_dir.
"""

import ast
import dataclasses
import os
import random
import shlex
import sys

import numpy as np
import torch

from .errors import GPTCoreError
from .fileio import atomic_path, write_json


def set_seed(seed: int) -> None:
    """Seeds Python's random, numpy, and torch: the CPU and every CUDA device."""
    # numpy only takes seeds in [0, 2**32); checking here gives one line instead of numpy's traceback
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise GPTCoreError(f"the seed must be a whole number from 0 to 2**32 - 1, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU and every CUDA device


def setup_logging(config: "CfgNode") -> None:
    """Creates config.system.work_dir; writes the command line to args.txt and the whole config to config.json."""
    work_dir = getattr(getattr(config, "system", None), "work_dir", None)
    if not isinstance(work_dir, (str, os.PathLike)):
        raise GPTCoreError("setup_logging needs config.system.work_dir, the folder for args.txt and config.json: "
                           "C.system = CN(work_dir='./out/myrun')")
    os.makedirs(work_dir, exist_ok=True)
    # shlex quotes what needs quoting, so args.txt pastes back into a shell as the same command
    with atomic_path(os.path.join(work_dir, "args.txt")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(shlex.join(sys.argv) + "\n")
    write_json(os.path.join(work_dir, "config.json"), config.to_dict(), indent=4)


class CfgNode:
    """A section of a config tree: CfgNode(seed=3407, work_dir='./out'), then attributes to read and set.

    Values are plain (numbers, strings, None, lists, tuples, dicts) or sections: another CfgNode, or a
    dataclass config such as GPT.get_default_config() returns. Sections nest: config.trainer.batch_size.
    """

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __setattr__(self, key, value):
        if hasattr(CfgNode, key):
            raise GPTCoreError(f"'{key}' cannot be a config key: CfgNode has a method or attribute of that name")
        object.__setattr__(self, key, value)

    def __getattr__(self, key):
        # only called when `key` is missing; AttributeError keeps hasattr(), copy and pickle working
        raise AttributeError(f"this config has no key '{key}'; its keys are: {', '.join(vars(self)) or 'none'}")

    def __str__(self) -> str:
        return "".join(_lines(self, 0))

    def __repr__(self) -> str:
        return "CfgNode(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"

    def to_dict(self) -> dict:
        """The tree as nested dicts of JSON values: sections (CfgNode or dataclass) become dicts, tuples lists."""
        return _plain(self, "")

    def merge_from_dict(self, d: dict) -> None:
        """Sets each key of d; a dict given for a section merges into it, so merge_from_dict(other.to_dict()) copies.

        Keys must exist already: a misspelt key is an error, not a new setting.
        """
        if not isinstance(d, dict):
            raise GPTCoreError(f"merge_from_dict takes a dict, got {type(d).__name__}")
        _merge(self, d, "")

    def merge_from_args(self, args: list[str]) -> None:
        """Applies command-line overrides such as sys.argv[1:]: --trainer.batch_size=32 --model.model_type=gpt2.

        A value is read as a Python literal where it is one (32, 5e-4, None, (0.9, 0.95), True) and kept as the
        text otherwise (gpt2, ./out/run); a key holding a string or path keeps the text even if it reads as a number.
        """
        if isinstance(args, str):
            raise GPTCoreError("merge_from_args takes a list of arguments such as sys.argv[1:], not one string")
        for arg in args:
            if not arg.startswith("--"):
                raise GPTCoreError(f"config override {arg!r} must start with '--', as in --{arg.lstrip('-')}")
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                raise GPTCoreError(f"config override {arg!r} has no value; write it as {arg}=VALUE")
            path = key.split(".")
            if not all(path):
                raise GPTCoreError(f"config override {arg!r} names no key; write it as --section.key=VALUE")
            section = self
            for depth, name in enumerate(path[:-1]):
                section = _child(section, name, ".".join(path[:depth]), arg)
                if not _is_section(section):
                    raise GPTCoreError(f"{arg}: {'.'.join(path[:depth + 1])} is a value ({section!r}), "
                                       "not a section with keys")
            current = _child(section, path[-1], ".".join(path[:-1]), arg)
            value = _parse(raw)
            if isinstance(current, (str, os.PathLike)) and not isinstance(value, str) and value is not None:
                value = raw
            _set(section, path[-1], value, key, arg)


def _is_section(value) -> bool:
    """A CfgNode, or a dataclass instance (a leaf config with its own fields)."""
    return isinstance(value, CfgNode) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _keys(section) -> list[str]:
    if isinstance(section, CfgNode):
        return list(vars(section))
    return [f.name for f in dataclasses.fields(section)]


def _child(section, key: str, where: str, source: str):
    """section.key, or one line naming the unknown key and the keys that exist at that level."""
    known = _keys(section)
    if key not in known:
        full = f"{where}.{key}" if where else key
        level = f"under '{where}'" if where else "at the top level"
        raise GPTCoreError(f"{source}: unknown config key '{full}'; the keys {level} are: "
                           f"{', '.join(known) or 'none'}")
    return getattr(section, key)


def _merge(section, d: dict, where: str) -> None:
    """merge_from_dict on any section, CfgNode or dataclass; where is the section's dotted path, for errors."""
    for key, value in d.items():
        full = f"{where}.{key}" if where else key
        current = _child(section, key, where, f"merge_from_dict {full}={value!r}")
        if isinstance(value, dict) and _is_section(current):
            _merge(current, value, full)
        else:
            _set(section, key, value, full, f"merge_from_dict {full}={value!r}")


def _parse(raw: str):
    """'32' -> 32, '(0.9, 0.95)' -> (0.9, 0.95), 'None' -> None; text that is no Python literal stays text."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def _set(section, key: str, value, where: str, source: str) -> None:
    """section.key = value, once value has the kind of the value it replaces (an int stays an int...).

    A dataclass config's own checks run as it is set, through setattr.
    """
    current = getattr(section, key)
    if current is not None and value is not None:
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(current)(value)
        elif isinstance(current, os.PathLike) and isinstance(value, str):  # to_dict() wrote the path as text
            value = type(current)(value)
        elif isinstance(current, bool) != isinstance(value, bool) or not isinstance(value, type(current)):
            raise GPTCoreError(f"{source}: {where} must stay {type(current).__name__}: it is {current!r}, "
                               f"got {value!r}")
    setattr(section, key, value)


def _plain(value, where: str):
    """value as JSON: sections -> dicts, tuples -> lists; anything JSON cannot hold is one clear error."""
    if _is_section(value):
        return {k: _plain(getattr(value, k), f"{where}.{k}" if where else k) for k in _keys(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise GPTCoreError(f"config value {where} is a dict with non-string keys, which JSON cannot hold")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise GPTCoreError(f"config value {where} is a {type(value).__name__} ({value!r}), which a JSON config cannot "
                       "hold; store a number, string, list or dict instead")


def _lines(section, indent: int) -> list[str]:
    """The readable form: 'key: value' per line, each section's keys indented four spaces under its name."""
    pad = " " * (4 * indent)
    out = []
    for key in _keys(section):
        value = getattr(section, key)
        if _is_section(value):
            out.append(f"{pad}{key}:\n")
            out.extend(_lines(value, indent + 1))
        else:
            out.append(f"{pad}{key}: {value}\n")
    return out
