"""A corrupt policy checkpoint is refused with one line naming the file, what is wrong and what
was expected, before anything runs or is written: by `load_policy` and by `vla-rl eval`.

Every case saves a tiny native policy, corrupts one thing, and expects PolicyCheckpointError
(a ValueError, so the CLI prints it and exits 2). A pickle in place of model.safetensors must
be refused without being unpickled: the crafted one would create a marker file if it were.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from toy_benchmark import ToyBenchmark

from vla_rl.cli import main
from vla_rl.core.policy import CONFIG_FILE, WEIGHTS_FILE, PolicyCheckpointError, load_policy
from vla_rl.core.registry import POLICIES


class MarkerOnUnpickle:
    """Unpickling this creates `path` (the proof a loader unpickled the file)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def edit_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(directory: Path) -> None:
        config = json.loads((directory / CONFIG_FILE).read_text())
        change(config)
        (directory / CONFIG_FILE).write_text(json.dumps(config))

    return corrupt


def edit_weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(directory: Path) -> None:
        state = load_file(str(directory / WEIGHTS_FILE))
        change(state)
        save_file(state, str(directory / WEIGHTS_FILE))

    return corrupt


def write_bytes(data: Callable[[Path], bytes]) -> Callable[[Path], None]:
    def corrupt(directory: Path) -> None:
        path = directory / WEIGHTS_FILE
        path.write_bytes(data(path))

    return corrupt


def pickled(directory: Path) -> None:
    # A bare pickle (torch.save's legacy format) whose loading would create the marker.
    (directory / WEIGHTS_FILE).write_bytes(pickle.dumps(MarkerOnUnpickle(directory / "MARKER")))


def torch_saved(directory: Path) -> None:
    # torch.save's default zip format, holding the same crafted object.
    torch.save({"w": MarkerOnUnpickle(directory / "MARKER")}, directory / WEIGHTS_FILE)


def set_tensor(name: str, value: float) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value

    return change


# name -> (corruption, the file named, a phrase of the message)
CASES = {
    "config-not-json": (lambda d: (d / CONFIG_FILE).write_text("{oops"), CONFIG_FILE,
                        "not valid JSON"),
    "config-a-list": (lambda d: (d / CONFIG_FILE).write_text("[1, 2]"), CONFIG_FILE,
                      "holds an array; expected a JSON object"),
    "config-no-policy-type": (edit_config(lambda c: c.pop("policy_type")), CONFIG_FILE,
                              "no 'policy_type'"),
    "config-unknown-policy-type": (edit_config(lambda c: c.update(policy_type="nope")),
                                   CONFIG_FILE, "unknown policy_type 'nope'"),
    "config-unknown-field": (edit_config(lambda c: c.update(hiddn=8)), CONFIG_FILE,
                             "unknown field 'hiddn' for a 'flow' policy; valid fields: state_dim"),
    "config-missing-field": (edit_config(lambda c: c.pop("state_dim")), CONFIG_FILE,
                             "missing required field(s) state_dim"),
    "config-wrong-type": (edit_config(lambda c: c.update(hidden="big")), CONFIG_FILE,
                          "field 'hidden' is a string (\"big\"); expected int"),
    "config-bool-for-int": (edit_config(lambda c: c.update(chunk_size=True)), CONFIG_FILE,
                            "field 'chunk_size' is a boolean"),
    "config-bad-value": (edit_config(lambda c: c.update(hidden=-3)), CONFIG_FILE,
                         "do not build a 'flow' policy"),
    "config-other-size": (edit_config(lambda c: c.update(hidden=16)), WEIGHTS_FILE,
                          "of the wrong shape"),
    "weights-missing": (lambda d: (d / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "missing; a 'flow'"),
    "weights-empty": (write_bytes(lambda p: b""), WEIGHTS_FILE, "empty (0 bytes)"),
    "weights-truncated": (write_bytes(lambda p: p.read_bytes()[: p.stat().st_size // 2]),
                          WEIGHTS_FILE, "not a readable safetensors file"),
    "weights-garbage": (write_bytes(lambda p: b"\x10" * 64), WEIGHTS_FILE,
                        "not a readable safetensors file"),
    "weights-wrong-shape": (edit_weights(lambda s: s.update({"velocity.0.bias": torch.zeros(7)})),
                            WEIGHTS_FILE, "velocity.0.bias: (7) in the file, (32) expected"),
    "weights-no-normaliser": (edit_weights(lambda s: s.pop("normalizer.state_mean")),
                              WEIGHTS_FILE, "1 missing tensor(s) (e.g. normalizer.state_mean)"),
    "weights-unexpected": (edit_weights(lambda s: s.update(extra=torch.zeros(2))), WEIGHTS_FILE,
                           "1 unexpected (e.g. extra)"),
    "weights-nan": (edit_weights(set_tensor("velocity.0.weight", float("nan"))), WEIGHTS_FILE,
                    "tensor 'velocity.0.weight' holds 1 NaN/inf"),
    "normaliser-inf": (edit_weights(set_tensor("normalizer.state_std", float("inf"))),
                       WEIGHTS_FILE, "tensor 'normalizer.state_std' holds 1 NaN/inf"),
    "weights-pickle": (pickled, WEIGHTS_FILE, "is a pickle, not safetensors; refused unread"),
    "weights-torch-save": (torch_saved, WEIGHTS_FILE, "is a zip archive (torch.save's format)"),
}  # fmt: skip


def saved_flow(directory: Path, state_dim: int = 2, action_dim: int = 1) -> Path:
    flow = POLICIES.get("flow")
    if state_dim == 2:
        policy = flow.contract_instance(ToyBenchmark(), directory)  # hidden 32
    else:  # Meta-World's sizes, for the CLI
        policy = flow(state_dim, action_dim, ["<pad>", "<unk>"], chunk_size=2, hidden=32,
                      num_flow_steps=2)  # fmt: skip
    policy.save_pretrained(directory / "policy")
    return directory / "policy"


def check_one_line(message: str, directory: Path, file: str, phrase: str) -> None:
    assert "\n" not in message.strip(), message
    assert str(directory / file) in message, message
    assert phrase in message, message
    assert not (directory / "MARKER").exists(), "the crafted pickle was unpickled"


def test_an_intact_checkpoint_loads(tmp_path):
    directory = saved_flow(tmp_path)
    loaded = load_policy(str(directory))
    assert loaded.policy_type == "flow" and loaded.config["hidden"] == 32


@pytest.mark.parametrize("case", list(CASES))
def test_load_policy_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, case):
    corrupt, file, phrase = CASES[case]
    directory = saved_flow(tmp_path)
    corrupt(directory)
    with pytest.raises(PolicyCheckpointError) as err:
        load_policy(str(directory))
    check_one_line(str(err.value), directory, file, phrase)


@pytest.mark.parametrize("case", list(CASES))
def test_eval_refuses_a_corrupt_checkpoint_before_writing(tmp_path, capsys, case):
    corrupt, file, phrase = CASES[case]
    directory = saved_flow(tmp_path, state_dim=39, action_dim=4)
    corrupt(directory)
    out = tmp_path / "eval"
    code = main(["eval", "--policy", str(directory), "--benchmark", "metaworld",
                 "--tasks", "reach-v3", "--output-dir", str(out)])  # fmt: skip
    stderr = capsys.readouterr().err.strip()
    assert code == 2
    assert stderr.startswith("vla-rl eval: error: ")
    check_one_line(stderr, directory, file, phrase.replace("(32)", "(32)"))
    assert not out.exists()


def test_a_policy_without_tensors_needs_no_weights_file(tmp_path):
    random = POLICIES.get("random")(action_dim=2)
    random.save_pretrained(tmp_path / "r")
    (tmp_path / "r" / WEIGHTS_FILE).unlink()
    assert load_policy(str(tmp_path / "r")).action_dim == 2


def test_a_residual_checkpoint_is_checked_as_well(tmp_path):
    residual = POLICIES.get("residual") if "residual" in POLICIES else None
    if residual is None:
        from vla_rl.methods.residual.policy import ResidualPolicy as residual
    base = POLICIES.get("flow").contract_instance(ToyBenchmark(), tmp_path)
    policy = residual(base, 2, 1, ["left", "right"], [-1.0], [1.0], hidden=8)
    policy.save_pretrained(tmp_path / "res")
    assert isinstance(load_policy(str(tmp_path / "res")), residual)
    edit_weights(set_tensor(next(iter(policy.weights_to_save())), float("nan")))(tmp_path / "res")
    with pytest.raises(PolicyCheckpointError, match="NaN/inf") as err:
        load_policy(str(tmp_path / "res"))
    assert str(tmp_path / "res" / WEIGHTS_FILE) in str(err.value)
    edit_config(lambda c: c.update(hiden=3))(tmp_path / "res")
    with pytest.raises(PolicyCheckpointError, match="unknown field 'hiden'"):
        load_policy(str(tmp_path / "res"))


@pytest.fixture(scope="module")
def tiny_smolvla(tmp_path_factory):
    from vla_rl.policies.smolvla_tiny import build_smolvla

    return build_smolvla(tmp_path_factory.mktemp("smolvla") / "tiny", 1, 2, chunk_size=2)


def normaliser_without_action_std(directory: Path) -> None:
    (path,) = directory.glob("policy_preprocessor_step_*normalizer_processor.safetensors")
    stats = load_file(str(path))
    stats.pop("action.std")
    save_file(stats, str(path))


REAL_CASES = {
    "truncated": (write_bytes(lambda p: p.read_bytes()[:100]), WEIGHTS_FILE,
                  "not a readable safetensors file"),
    "nan": (edit_weights(lambda s: set_tensor(next(k for k in sorted(s) if "proj" in k),
                                              float("nan"))(s)), WEIGHTS_FILE, "NaN/inf"),
    "wrong-shape": (edit_weights(lambda s: s.update({k: torch.zeros(3) for k in sorted(s)[:1]})),
                    WEIGHTS_FILE, "of the wrong shape"),
    "pickle": (pickled, WEIGHTS_FILE, "is a pickle, not safetensors"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_a_published_real_vla_checkpoint_is_checked_as_well(tmp_path, tiny_smolvla, case):
    import shutil

    corrupt, file, phrase = REAL_CASES[case]
    directory = tmp_path / "smolvla"
    shutil.copytree(tiny_smolvla, directory)
    corrupt(directory)
    with pytest.raises(PolicyCheckpointError) as err:
        load_policy("smolvla", ToyBenchmark(), str(directory))
    message = str(err.value)
    assert "\n" not in message and phrase in message, message
    assert str(directory / file) in message or case in ("nan", "wrong-shape"), message
    assert not (directory / "MARKER").exists()


def test_real_vla_normaliser_statistics_are_checked(tmp_path, tiny_smolvla):
    import shutil

    directory = tmp_path / "smolvla"
    shutil.copytree(tiny_smolvla, directory)
    if not list(directory.glob("policy_preprocessor_step_*normalizer_processor.safetensors")):
        pytest.skip("the tiny SmolVLA keeps its statistics in model.safetensors")
    normaliser_without_action_std(directory)
    with pytest.raises(PolicyCheckpointError, match="no action.std; expected the MEAN_STD"):
        load_policy("smolvla", ToyBenchmark(), str(directory))


@pytest.fixture(scope="module")
def tiny_pi0(tmp_path_factory):
    from vla_rl.policies.pi0_tiny import write_tiny_pi0

    return write_tiny_pi0(tmp_path_factory.mktemp("pi0") / "tiny", 4, 6)


PI0_CASES = {  # transformers' from_pretrained loads all of these with a warning at most
    "missing": (lambda s: s.pop(sorted(s)[0]), "1 missing tensor(s)"),
    "wrong-shape": (lambda s: s.update({sorted(s)[0]: torch.zeros(3)}), "1 of the wrong shape"),
    "unexpected": (lambda s: s.update({"extra.weight": torch.zeros(3)}), "1 unexpected"),
    "nan": (lambda s: set_tensor(sorted(s)[0], float("nan"))(s), "NaN/inf"),
}


@pytest.mark.parametrize("case", list(PI0_CASES))
def test_a_pi0_checkpoint_is_checked_before_transformers_loads_it(tmp_path, tiny_pi0, case):
    import shutil

    directory = tmp_path / "pi0"
    shutil.copytree(tiny_pi0, directory)
    load_policy("pi0", None, str(directory))  # intact: loads
    corrupt, phrase = PI0_CASES[case]
    edit_weights(corrupt)(directory)
    with pytest.raises(PolicyCheckpointError) as err:
        load_policy("pi0", None, str(directory))
    assert "\n" not in str(err.value) and phrase in str(err.value), str(err.value)


def test_a_safetensors_file_whose_first_byte_is_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The first 8 bytes are the header's length: 128 + 256 n starts with 0x80, the byte every
    pickle starts with. pi0's tiny checkpoint saved by transformers hit this."""
    from vla_rl.core.policy import read_safetensors

    path = tmp_path / "model.safetensors"
    for pad in range(300):  # header sizes vary with the metadata: find one of 0x80 mod 256
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(read_safetensors(path)["w"], torch.zeros(2))
