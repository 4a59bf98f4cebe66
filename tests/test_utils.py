"""gptcore.utils: minGPT's set_seed, setup_logging and CfgNode.

References: each generator seeded by hand (random, numpy, torch); hand-written expected trees and strings;
json and shlex to read back what setup_logging wrote.
"""

import json
import os
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gptcore import GPT, Trainer
from gptcore.errors import GPTCoreError
from gptcore.utils import CfgNode as CN
from gptcore.utils import set_seed, setup_logging


def draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


# ---- set_seed

def test_set_seed_seeds_every_generator():
    set_seed(1234)
    first = draw()
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    assert draw() == first
    set_seed(1235)
    assert draw() != first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_set_seed_seeds_every_cuda_device():
    def draws():
        return [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())]
    set_seed(99)
    first = draws()
    torch.cuda.manual_seed_all(99)
    assert draws() == first


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3407", None])
def test_set_seed_rejects_what_numpy_cannot_take(seed):
    with pytest.raises(GPTCoreError, match="seed must be a whole number") as e:
        set_seed(seed)
    assert "\n" not in str(e.value)


# ---- CfgNode, with a dataclass leaf of our own

@dataclass
class Leaf:
    """A dataclass config like GPT.get_default_config()'s, with a check of its own on assignment."""
    batch_size: int = 64
    learning_rate: float = 3e-4
    betas: tuple = (0.9, 0.95)
    max_iters: int | None = None
    device: str = "auto"

    def __setattr__(self, key, value):
        if key == "batch_size" and value is not None and value < 1:
            raise GPTCoreError(f"batch_size must be at least 1, got {value}")
        super().__setattr__(key, value)


def tree():
    C = CN()
    C.system = CN(seed=3407, work_dir="./out/run")
    C.trainer = Leaf()
    C.data = CN(block_size=8, path=Path("input.txt"))
    return C


def test_kwargs_attributes_and_nesting():
    C = CN(a=1, sub=CN(b="x"))
    assert C.a == 1 and C.sub.b == "x"
    C.sub.c = CN(d=None)
    C.a = 2
    assert C.to_dict() == {"a": 2, "sub": {"b": "x", "c": {"d": None}}}
    assert not hasattr(C, "nope")
    with pytest.raises(AttributeError, match="no key 'nope'; its keys are: a, sub"):
        C.nope
    with pytest.raises(GPTCoreError, match="'to_dict' cannot be a config key"):
        CN(to_dict=1)


def test_str_indents_each_section_and_expands_dataclass_leaves():
    assert str(tree()) == (
        "system:\n"
        "    seed: 3407\n"
        "    work_dir: ./out/run\n"
        "trainer:\n"
        "    batch_size: 64\n"
        "    learning_rate: 0.0003\n"
        "    betas: (0.9, 0.95)\n"
        "    max_iters: None\n"
        "    device: auto\n"
        "data:\n"
        "    block_size: 8\n"
        "    path: input.txt\n"
    )


def test_to_dict_recurses_into_both_kinds_of_section_and_is_json():
    d = tree().to_dict()
    assert d == {
        "system": {"seed": 3407, "work_dir": "./out/run"},
        "trainer": {"batch_size": 64, "learning_rate": 3e-4, "betas": [0.9, 0.95], "max_iters": None,
                    "device": "auto"},
        "data": {"block_size": 8, "path": "input.txt"},
    }
    assert json.loads(json.dumps(d)) == d


def test_to_dict_names_a_value_json_cannot_hold():
    C = tree()
    C.system.device = torch.device("cpu")
    with pytest.raises(GPTCoreError, match="config value system.device is a device") as e:
        C.to_dict()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arg, where, expected", [
    ("--trainer.batch_size=32", "trainer.batch_size", 32),
    ("--trainer.learning_rate=5e-4", "trainer.learning_rate", 5e-4),
    ("--trainer.learning_rate=1", "trainer.learning_rate", 1.0),  # an int where a float was: becomes a float
    ("--trainer.betas=(0.8, 0.99)", "trainer.betas", (0.8, 0.99)),
    ("--trainer.betas=[0.8,0.99]", "trainer.betas", (0.8, 0.99)),  # stays a tuple
    ("--trainer.max_iters=50", "trainer.max_iters", 50),
    ("--trainer.device=cuda", "trainer.device", "cuda"),  # not a Python literal: text
    ("--system.work_dir=./out/a b", "system.work_dir", "./out/a b"),
    ("--system.work_dir=123", "system.work_dir", "123"),  # a string key keeps the text
    ("--system.work_dir=None", "system.work_dir", None),
    ("--system.work_dir=a=b", "system.work_dir", "a=b"),  # only the first '=' separates
    ("--system.seed=None", "system.seed", None),
    ("--data.block_size=0x10", "data.block_size", 16),
    ("--data.path=7", "data.path", Path("7")),  # a path key keeps the text, as a path
])
def test_merge_from_args_reads_python_literals_else_text(arg, where, expected):
    C = tree()
    C.merge_from_args([arg])
    section, key = where.split(".")
    value = getattr(getattr(C, section), key)
    assert value == expected and type(value) is type(expected)


def test_merge_from_args_sets_the_dataclass_leaf_in_place_through_its_own_check():
    C = tree()
    leaf = C.trainer
    C.merge_from_args(["--trainer.batch_size=8", "--system.seed=1"])
    assert leaf.batch_size == 8 and C.trainer is leaf and C.system.seed == 1
    with pytest.raises(GPTCoreError, match="batch_size must be at least 1, got 0"):
        C.merge_from_args(["--trainer.batch_size=0"])


@pytest.mark.parametrize("args, message", [
    (["--trainer.nope=1"], "--trainer.nope=1: unknown config key 'trainer.nope'; the keys under 'trainer' are: "
                           "batch_size, learning_rate, betas, max_iters, device"),
    (["--model.n_layer=2"], "--model.n_layer=2: unknown config key 'model'; the keys at the top level are: "
                            "system, trainer, data"),
    (["--trainer.batch_size"], "config override '--trainer.batch_size' has no value; "
                               "write it as --trainer.batch_size=VALUE"),
    (["trainer.batch_size=3"], "config override 'trainer.batch_size=3' must start with '--', "
                               "as in --trainer.batch_size=3"),
    (["--=3"], "config override '--=3' names no key"),
    (["--trainer..batch_size=3"], "names no key"),
    (["--trainer.batch_size.x=3"], "--trainer.batch_size.x=3: trainer.batch_size is a value (64), not a section"),
    (["--trainer.batch_size=abc"], "--trainer.batch_size=abc: trainer.batch_size must stay int: it is 64, got 'abc'"),
    (["--trainer.batch_size=2.5"], "trainer.batch_size must stay int"),
    (["--system.seed=True"], "system.seed must stay int"),
    ("--trainer.batch_size=3", "takes a list of arguments such as sys.argv[1:], not one string"),
])
def test_bad_overrides_get_one_clear_line(args, message):
    with pytest.raises(GPTCoreError) as e:
        tree().merge_from_args(args)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_merge_from_dict_copies_a_tree_and_refuses_unknown_keys():
    source = tree()
    source.merge_from_args(["--trainer.betas=(0.5, 0.6)", "--data.block_size=4", "--system.work_dir=x"])
    target = tree()
    target.merge_from_dict(source.to_dict())
    assert target.to_dict() == source.to_dict()
    assert target.trainer.betas == (0.5, 0.6)
    with pytest.raises(GPTCoreError, match="unknown config key 'trainer.nope'; the keys under 'trainer' are"):
        target.merge_from_dict({"trainer": {"nope": 1}})
    with pytest.raises(GPTCoreError, match="takes a dict"):
        target.merge_from_dict([("a", 1)])


# ---- with gptcore's own configs, as a minGPT script builds them

def mingpt_tree(work_dir):
    C = CN()
    C.system = CN(seed=3407, work_dir=str(work_dir))
    C.data = CN(block_size=16)
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-mini"
    C.trainer = Trainer.get_default_config()
    return C


def test_setup_logging_writes_the_command_line_and_the_whole_config(tmp_path, monkeypatch):
    work_dir = tmp_path / "out" / "chargpt"  # does not exist yet
    argv = ["chargpt.py", "--trainer.max_iters=50", "--model.model_type=gpt-nano", "--system.work_dir=a dir/x"]
    monkeypatch.setattr(sys, "argv", argv)
    C = mingpt_tree(work_dir)
    C.merge_from_args(argv[1:3])
    setup_logging(C)
    assert sorted(os.listdir(work_dir)) == ["args.txt", "config.json"]  # nothing half-written left beside them
    assert shlex.split((work_dir / "args.txt").read_text()) == argv
    with open(work_dir / "config.json") as f:
        saved = json.load(f)
    assert list(saved) == ["system", "data", "model", "trainer"]
    assert saved == C.to_dict()
    assert saved["trainer"]["max_iters"] == 50 and saved["model"]["model_type"] == "gpt-nano"
    # every key of the leaf configs is there, with its value
    for section in ("model", "trainer"):
        leaf = getattr(C, section)
        assert saved[section] == json.loads(json.dumps({k: getattr(leaf, k) for k in saved[section]}))
    assert {"n_layer", "n_head", "n_embd", "vocab_size", "block_size"} <= set(saved["model"])
    assert {"device", "num_workers", "max_iters", "batch_size", "learning_rate", "betas"} <= set(saved["trainer"])


def test_setup_logging_needs_a_work_dir():
    with pytest.raises(GPTCoreError, match="needs config.system.work_dir"):
        setup_logging(CN(model=CN()))


def test_overrides_on_gptcores_own_configs(tmp_path):
    C = mingpt_tree(tmp_path)
    C.merge_from_args(["--trainer.max_iters=50", "--model.model_type=gpt-nano", "--trainer.batch_size=4"])
    assert C.trainer.max_iters == 50 and C.trainer.batch_size == 4 and C.model.model_type == "gpt-nano"
    for args, message in [
        (["--trainer.nope=1"], "unknown config key 'trainer.nope'; the keys under 'trainer' are: "),
        (["--trainer.batch_size"], "has no value"),
        (["trainer.batch_size=3"], "must start with '--'"),
    ]:
        with pytest.raises(GPTCoreError, match=message) as e:
            C.merge_from_args(args)
        assert "\n" not in str(e.value)
        if "nope" in args[0]:
            assert "batch_size" in str(e.value) and "learning_rate" in str(e.value)


def test_a_model_type_and_sizes_together_get_one_clear_line(tmp_path):
    C = mingpt_tree(tmp_path)
    C.model.vocab_size, C.model.block_size = 10, 8
    with pytest.raises(GPTCoreError) as e:
        C.merge_from_args(["--model.model_type=gpt-nano", "--model.n_layer=2"])
        GPT(C.model)  # the check may run when the sizes are set or when the model is built
    assert "model_type" in str(e.value) and "\n" not in str(e.value)
