"""Bad input through the command line: every case must stop with one line naming the file or flag.

Each case runs `neuralmorph.cli.main(argv)` in-process (`run_bad`) and checks:

- the exit code is non-zero (a `SystemExit`; any other exception escaping `main` is a bug and fails
  the case with its traceback);
- stderr holds exactly ONE error line, it starts `neuralmorph: error: ` and contains the case's
  expected text (the file or the flag at fault). Not counted: progress-bar redraws (tqdm lines, which
  a terminal draws over one another on a single row) and `neuralmorph: warning: ...` lines (returned
  for cases that check them). A Python warning that would be shown on a terminal (a numpy or torch
  overflow RuntimeWarning, say) counts as a line, so such warnings fail the case; "Traceback" anywhere
  on stderr fails it too;
- nothing is written at the output path: absent before, absent after (no temporary sibling left
  either); present before, byte-identical after;
- every input is byte-identical afterwards: each argv value that is an existing path (a file, or every
  file under a folder) plus the `inputs` given, hashed before and after.

`run_warn` is the counterpart for input that is accepted with a warning: exit 0 and exactly one
`neuralmorph: warning:` line naming what was ignored.

Cases are data (`Case`): argv templates whose `{name}` fields are the module fixture's paths (`Env`)
and `{tmp}` the case's own empty folder. Other suites of bad input (output safety: outputs that are
folders, paths under files, read-only folders, data-loss refusals) add their cases to `CASES` or call
`run_bad` directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from neuralmorph.cli import main
from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.synth import SynthConfig, synthesize
from neuralmorph.geometry.mesh import Mesh, save_mesh
from neuralmorph.models import MODELS
from neuralmorph.models.base import MorphableModel
from neuralmorph.models.latents import save_latents
from neuralmorph.models.train import train_model
from neuralmorph.training import TrainerConfig

# --- the harness ---------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^[^\r\n]*?:\s+\d+%\|")  # a tqdm bar: "desc:  40%|####  | 2/5 [...]"
_SHOWN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
"""Warning categories Python hides from a command-line user by default; every other one is a stderr line."""


def _snapshot(path: Path) -> object:
    """Content fingerprint of a file (its hash) or a folder (relative path -> hash, folders as None)."""
    if path.is_symlink() or path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ("link", str(path.readlink()))
    if path.is_dir():
        return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
                for p in sorted(path.rglob("*"))}
    return None


def _stderr_lines(text: str) -> tuple[list[str], list[str]]:
    """(error and other lines, `neuralmorph: warning:` lines) of captured stderr, progress bars dropped."""
    lines, warned = [], []
    for line in text.split("\n"):
        segments = [s for s in line.split("\r") if s.strip()]
        if not segments or all(_PROGRESS.match(s) for s in segments):
            continue
        shown = segments[-1].strip()  # what a terminal leaves on the row
        (warned if shown.startswith("neuralmorph: warning:") else lines).append(shown)
    return lines, warned


@dataclass
class Ran:
    code: int | str | None
    stdout: str
    stderr: str
    lines: list[str]        # stderr lines that are neither progress bars nor neuralmorph warnings
    warned: list[str]       # neuralmorph warning lines


def run_cli(argv: Sequence[object]) -> Ran:
    """`neuralmorph ARGV` in-process: exit code, captured output, and the stderr lines as defined above."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    shown = [w for w in caught if not issubclass(w.category, _SHOWN_WARNINGS)]
    text = err.getvalue() + "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in shown)
    lines, warned = _stderr_lines(text)
    return Ran(code, out.getvalue(), text, lines, warned)


def run_bad(argv: Sequence[object], expect_in_line: str | Sequence[str], out: str | Path | None = None,
            inputs: Sequence[str | Path] = ()) -> str:
    """Run a bad invocation and check the contract in the module docstring; returns the error line.
    `expect_in_line`: text the line must contain (several: all of them)."""
    argv = [str(a) for a in argv]
    out = None if out is None else Path(out)
    watched = {Path(a) for a in argv if a and not a.startswith("-") and Path(a).exists()} | {Path(p) for p in inputs}
    watched.discard(out)
    before = {p: _snapshot(p) for p in watched}
    out_before = None if out is None else _snapshot(out)

    ran = run_cli(argv)

    assert "Traceback" not in ran.stderr, ran.stderr
    assert ran.code not in (0, None), f"exit {ran.code}: bad input accepted\nstdout: {ran.stdout}\nstderr: {ran.stderr}"
    assert len(ran.lines) == 1, f"expected one error line, got {len(ran.lines)}:\n" + "\n".join(ran.lines)
    line = ran.lines[0]
    assert line.startswith("neuralmorph: error: "), line
    for expected in ([expect_in_line] if isinstance(expect_in_line, str) else expect_in_line):
        assert expected in line, f"{expected!r} not in {line!r}"
    if out is not None:
        assert _snapshot(out) == out_before, f"{out} was written"
        if out_before is None:
            assert not list(out.parent.glob(f".{out.name}.nmtmp-*")), f"a temporary of {out} was left behind"
    for p, snap in before.items():
        assert _snapshot(p) == snap, f"input {p} changed"
    return line


def run_warn(argv: Sequence[object], expect_in_warning: str) -> Ran:
    """Run an invocation whose input is accepted with a warning: exit 0, no error line, one warning line."""
    ran = run_cli(argv)
    assert "Traceback" not in ran.stderr, ran.stderr
    assert ran.code in (0, None), ran.stderr
    assert ran.lines == [], ran.lines
    assert len(ran.warned) == 1 and expect_in_warning in ran.warned[0], ran.warned
    return ran


# --- inputs, made once per module -------------------------------------------------------------------------

TINY_REGIONAL = ["--model.latent-size", "8", "--model.dim", "32", "--model.heads", "2", "--model.encoder-depth", "1",
                 "--model.decoder-depth", "1", "--model.embed-size", "8", "--model.control-per-region", "4",
                 "--model.control-hidden", "16", "--batch-size", "2", "--checkpoint-every", "1", "--val-every", "0",
                 "--log-every", "1", "--no-tensorboard", "--max-steps", "2"]
"""A regional run small enough to train (and to resume) in about a second."""

RESUMES = ("binary_state", "list_state", "state_without_step", "binary_run_config", "list_run_config")


@dataclass
class Env:
    root: Path
    paths: dict[str, str]


def _cli(*argv) -> None:
    ran = run_cli(argv)
    assert ran.code in (0, None), ran.stderr


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "weights.safetensors"
    with safe_open(str(path), "np") as fh:
        meta = fh.metadata()
    arrays = {k: v.copy() for k, v in load_file(path).items()}
    change(arrays)
    save_file(arrays, path, metadata=meta)


def _rewrite_json(path: Path, change: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set(d: dict, **kw) -> dict:
    return {**d, **kw}


def _without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad_input")
    bad = root / "bad"
    bad.mkdir()
    data = root / "data"
    synthesize(SynthConfig(out=data, subjects=4, expressions=2, seed=0, scans=False), progress=False)
    _cli("train", "pca", "--data", data, "--out", root / "pca", "--identity-dims", "2", "--expression-dims", "2")
    _cli("train", "regional", "--data", data, "--out", root / "reg1", *TINY_REGIONAL)
    _cli("train", "regional", "--data", data, "--out", root / "reg2", "--init", root / "reg1" / "model",
         "--model.stage", "2", *TINY_REGIONAL)
    fam = MODELS["implicit-global"]
    config, samples = fam.smoke_config()
    implicit = train_model(fam, HeadDataset.load(data), config, root / "implicit", samples=samples, progress=False,
                           trainer=TrainerConfig(max_steps=2, batch_size=2, checkpoint_every=0, val_every=0,
                                                 tensorboard=False, log_every=1)).folder

    ds = HeadDataset.load(data)
    head = ds.vertices[0].astype(np.float64)
    faces = ds.faces
    save_mesh(bad / "head.ply", Mesh(head, faces))
    save_mesh(bad / "huge.ply", Mesh(head * 1e30, faces))
    save_mesh(bad / "big.ply", Mesh(head * 1e7, faces))
    save_mesh(bad / "huge200.ply", Mesh(head * 1e200, faces))   # products overflow float64: RuntimeWarnings
    np.savetxt(bad / "huge200.xyz", head[::5] * 1e200)
    save_mesh(bad / "flat.ply", Mesh(np.repeat(head[:1], len(head), 0), faces))   # every vertex at one point
    save_mesh(bad / "other.ply", Mesh(head[:100], np.array([[0, 1, 2], [2, 3, 4]])))
    np.savetxt(bad / "cloud.xyz", head[::5])
    np.savetxt(bad / "six.xyz", head[:6])
    np.savetxt(bad / "one.xyz", head[:1])
    np.savetxt(bad / "same50.xyz", np.repeat(head[:1], 50, 0))
    line = np.zeros((50, 3))
    line[:, 0] = np.linspace(-80, 80, 50)
    np.savetxt(bad / "line.xyz", line)
    np.savetxt(bad / "huge.xyz", head[::10] * 1e30)
    np.savetxt(bad / "e300.xyz", np.full((20, 3), 1e300) * np.arange(1, 21)[:, None])
    np.save(bad / "huge.npy", head[::10] * 1e30)
    lm = head[ds.landmark_ids]
    np.savetxt(bad / "lm.txt", lm)
    lm_line = np.zeros_like(lm)
    lm_line[:, 0] = np.arange(len(lm))
    np.savetxt(bad / "lm_line.txt", lm_line)
    np.savetxt(bad / "lm_two.txt", lm[:2])
    np.savetxt(bad / "lm_same.txt", np.repeat(lm[:1], len(lm), 0))
    folder = bad / "clouds"  # a folder of observations, one of them three points
    folder.mkdir()
    np.savetxt(folder / "a.xyz", head[::7])
    np.savetxt(folder / "b.xyz", head[:3])
    seq = bad / "depth_seq"  # a depth sequence whose depths reach 1e30 mm
    seq.mkdir()
    np.save(seq / "depth_000.npy", np.full((8, 8), 1e30, np.float32))
    (seq / "camera.json").write_text(json.dumps({"format": "neuralmorph.depth_sequence/1", "units": "mm",
                                                 "intrinsics": [[10, 0, 4], [0, 10, 4], [0, 0, 1]],
                                                 "frames": [{"depth": "depth_000.npy"}]}))

    # garbage meshes: random bytes, and text that is not UTF-8 (trimesh then wants charset_normalizer)
    rng = np.random.default_rng(0)
    (bad / "garbage.stl").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (bad / "garbage.off").write_bytes(b"OFF\n\x00\xff\x13garbage\x99" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    (bad / "latin.stl").write_bytes(b"solid \xff\xfe head\n facet normal \xe9 0 0\n endsolid\n")
    (bad / "latin.off").write_bytes(b"OFF\n3 1 0\n0 0 0\n\xe9 1 0\n0 1 0\n3 0 1 2\n")

    # latents
    pca = MorphableModel.load(root / "pca")
    save_latents(bad / "ok.json", pca, pca.zero_latents(1))
    good = json.loads((bad / "ok.json").read_text())
    lat = good["latents"]
    variants = {
        "huge": {k: [3e38] * len(v) for k, v in lat.items()},
        "overflow": {k: [1e39] * len(v) for k, v in lat.items()},
        "nan": {k: [float("nan")] * len(v) for k, v in lat.items()},
        "list": [[0.0, 0.0], [0.0, 0.0]],
        "strings": {k: ["0"] * len(v) for k, v in lat.items()},
        "ragged": {k: [[0.0, 0.0], [0.0]] for k in lat},
        "objects": {k: {"a": 1} for k in lat},
        "bools": {k: [True] * len(v) for k, v in lat.items()},
    }
    for name, value in variants.items():
        (bad / f"lat_{name}.json").write_text(json.dumps(_set(good, latents=value)))
    (bad / "lat_missing.json").write_text(json.dumps(_without(good, "latents")))
    (bad / "lat_array.json").write_text("[1, 2, 3]")
    imp = MorphableModel.load(implicit)
    save_latents(bad / "imp_huge.json", imp, {k: v * 0 + 3e38 for k, v in imp.zero_latents(1).items()})

    # model folders with a damaged config.json or weights
    spec = json.loads((root / "pca" / "config.json").read_text())
    configs = {
        "list": [1, 2],
        "no_config": _without(spec, "config"),
        "config_list": _set(spec, config=[1]),
        "config_type": _set(spec, config=_set(spec["config"], identity_dims="two")),
        "config_bool": _set(spec, config=_set(spec["config"], explained_variance=True)),
        "config_unknown": _set(spec, config=_set(spec["config"], colour="red")),
        "config_invalid": _set(spec, config=_set(spec["config"], identity_dims=-3)),
        "no_family": _without(spec, "family"),
        "family_int": _set(spec, family=3),
        "frame_string": _set(spec, frame="x"),
        "frame_partial": _set(spec, frame={"origin": [0, 0, 0], "axes": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}),
        "sizes_strings": _set(spec, latent_sizes={"identity": "x", "expression": 2}),
        "sizes_empty": _set(spec, latent_sizes={}),
        "no_sizes": _without(spec, "latent_sizes"),
        "region_names_int": _set(spec, region_names=5),
        "wrong_size": _set(spec, latent_sizes={"identity": 3, "expression": 2}),
    }
    for name, value in configs.items():
        (_copy(root / "pca", bad / f"m_{name}") / "config.json").write_text(json.dumps(value))
    (_copy(root / "pca", bad / "m_binary") / "config.json").write_bytes(b"\x00\xff\xfe garbage")
    imp_spec = json.loads((implicit / "config.json").read_text())
    (_copy(implicit, bad / "imp_config_type") / "config.json").write_text(
        json.dumps(_set(imp_spec, config=_set(imp_spec["config"], sdf_hidden="wide"))))

    def nan_at(key):
        def change(a):
            a[key].reshape(-1)[0] = np.nan
        return change

    _rewrite_weights(_copy(root / "pca", bad / "m_nan_weights"), nan_at("mean"))
    _rewrite_weights(_copy(root / "pca", bad / "m_nan_regions"), nan_at("region_weights"))
    _rewrite_weights(_copy(root / "reg2" / "model", bad / "r_nan_regions"), nan_at("region_weights"))
    _rewrite_weights(_copy(implicit, bad / "imp_inf"), lambda a: a.__setitem__(
        "identity_codes", np.full_like(a["identity_codes"], np.inf)))
    _rewrite_weights(_copy(root / "pca", bad / "m_no_mean"), lambda a: a.pop("mean"))
    _rewrite_weights(_copy(root / "pca", bad / "m_extra"), lambda a: a.__setitem__("stray", np.zeros(3, np.float32)))

    # edit --control and evaluate --regions files
    texts = {
        "ctl_ragged.json": {"nose": [[0, 0], [1]]},
        "ctl_strings.json": {"nose": [["a", "b", "c"]] * 4},
        "ctl_numeric_strings.json": {"nose": [["1", "0", "0"]] * 4},
        "ctl_bools.json": {"nose": [[True, False, True]] * 4},
        "ctl_object.json": {"nose": {"x": 1}},
        "ctl_toplevel_list.json": [[0, 0, 1]],
        "ctl_rows.json": {"nose": [[0, 0, 1]] * 3},
        "reg_strings.json": {"nose": ["a", "b"]},
        "reg_object.json": {"nose": {"a": 1}},
        "reg_nested.json": {"nose": [[1, 2], [3]]},
        "reg_bools.json": {"nose": [True, False]},
        "reg_empty.json": {},
    }
    for name, value in texts.items():
        (bad / name).write_text(json.dumps(value))
    (bad / "ctl_nan.json").write_text('{"nose": [[NaN, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]}')
    (bad / "reg_broken.yaml").write_text("nose: [1, 2\nmouth: ]]\n")
    (bad / "reg_binary.yaml").write_bytes(b"\xff\xfe\x00\x01" * 20)

    # manifests for data ingest
    ing = bad / "ingest"
    ing.mkdir()
    for i in range(4):
        save_mesh(ing / f"h{i}.ply", Mesh(ds.vertices[i].astype(np.float64), faces))
        save_mesh(ing / f"z{i}.ply", Mesh(np.zeros_like(head), faces))
    rows = lambda stem, n=4: "".join(f"{stem}{i}.ply,s{i // 2},e{i % 2},{'test' if i == 3 else 'train'}\n" for i in range(n))  # noqa: E731
    (ing / "zero.csv").write_text("path,subject,expression,split\n" + rows("z"))
    (ing / "extra.csv").write_text("path,subject,expression,split,age,colour\n"
                                   + "".join(r[:-1] + ",31,red\n" for r in rows("h").splitlines(keepends=True)))
    (ing / "extra.yaml").write_text("heads:\n" + "".join(
        f"  - {{path: h{i}.ply, subject: s{i // 2}, expression: e{i % 2}, weight_kg: 70}}\n" for i in range(4)))
    (ing / "binary.csv").write_bytes(b"\x00\x01\xff\xfe" * 50)
    (ing / "binary.yaml").write_bytes(b"heads:\n  - \xff\xfe\x00\n")
    (ing / "broken.yaml").write_text("heads:\n  - path: h0.ply\n    subject: [a\n")
    shutil.copy(bad / "huge.ply", ing / "huge.ply")
    shutil.copy(bad / "garbage.stl", ing / "garbage.stl")
    (ing / "huge.csv").write_text("path,subject,expression\nh0.ply,a,n\nhuge.ply,b,n\n")
    (ing / "garbage.csv").write_text("path,subject,expression\nh0.ply,a,n\ngarbage.stl,b,n\n")
    (ing / "ok.csv").write_text("path,subject,expression,split\n" + rows("h"))

    # damaged datasets
    (_copy(data, bad / "ds_binary_manifest") / "manifest.csv").write_bytes(b"\x00\xff\xfe\x01" * 40)

    def heads_rewrite(name: str, change: Callable[[dict], None], meta_change: Callable[[dict], dict] | None = None):
        folder = _copy(data, bad / name)
        path = folder / "heads.safetensors"
        with safe_open(str(path), "np") as fh:
            meta = fh.metadata()
        arrays = {k: v.copy() for k, v in load_file(path).items()}
        change(arrays)
        if meta_change is not None:
            inner = json.loads(meta["neuralmorph"])
            meta = {"neuralmorph": json.dumps(meta_change(inner), sort_keys=True)}
        save_file(arrays, path, metadata=meta)

    heads_rewrite("ds_flat_head", lambda a: a["vertices"].__setitem__(0, a["vertices"][0, :1]))
    heads_rewrite("ds_huge_head", lambda a: a["vertices"].__setitem__(1, a["vertices"][1] * 1e10))
    heads_rewrite("ds_bad_frame", lambda a: None, lambda m: _set(m, frame={"origin": "here"}))
    no_test = _copy(data, bad / "ds_no_test")
    text = (no_test / "manifest.csv").read_text().replace(",test,", ",train,")
    (no_test / "manifest.csv").write_text(text)

    # training runs to resume, each damaged in one file
    for name in RESUMES:
        run = _copy(root / "reg1", bad / f"run_{name}")
        state = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() / "state.json"
        if name == "binary_state":
            state.write_bytes(b"\x00\xff" * 30)
        elif name == "list_state":
            state.write_text("[1, 2]")
        elif name == "state_without_step":
            _rewrite_json(state, lambda d: _without(d, "step"))
        elif name == "binary_run_config":
            (run / "run_config.json").write_bytes(b"\x00\xff" * 30)
        elif name == "list_run_config":
            (run / "run_config.json").write_text("[1, 2]")

    paths = {"data": data, "pca": root / "pca", "regional": root / "reg2" / "model", "implicit": implicit, "bad": bad,
             "ing": ing}
    return Env(root, {k: str(v) for k, v in paths.items()})


# --- the cases ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """`{name}`: a path of the module's inputs (Env.paths); `{tmp}`: this case's own empty folder."""
    expect: str | tuple[str, ...]
    """Text the error line must contain: the file or flag at fault, and for some cases what it must say
    (same placeholders)."""
    out: str | None
    """The output path (same placeholders); None when the verb writes nothing."""
    kind: str
    """Which class of bad input: geometry, non-finite, json, message."""
    setup: Callable | None = None
    """Called with pytest's monkeypatch before the run (to simulate the user's environment)."""


CASES: list[Case] = []


def case(kind: str, id: str, argv: Sequence[str], expect: str, out: str | None = None, setup=None) -> None:
    CASES.append(Case(id, tuple(argv), expect, out, kind, setup))


def fit(kind, id, target, expect, model="{pca}", extra=()):
    case(kind, id, ["fit", "--model", model, "--target", target, "--out", "{tmp}/fit", *extra], expect, "{tmp}/fit")


def align(kind, id, source, expect, target="{bad}/head.ply", extra=()):
    case(kind, id, ["align", "--source", source, "--target", target, "--out", "{tmp}/aligned.ply", *extra], expect,
         "{tmp}/aligned.ply")


def evaluate(kind, id, pred, gt, expect, extra=()):
    case(kind, id, ["evaluate", "--pred", pred, "--gt", gt, "--out", "{tmp}/metrics.json", "--n-points", "500", *extra],
         expect, "{tmp}/metrics.json")


def export(kind, id, expect, model="{pca}", latents=None):
    case(kind, id, ["export", "--model", model, *(["--latents", latents] if latents else []), "--out", "{tmp}/head.ply",
                    "--resolution", "16"], expect, "{tmp}/head.ply")


def sample(kind, id, expect, model="{pca}", extra=()):
    case(kind, id, ["sample", "--model", model, "--out", "{tmp}/heads", "--n", "2", "--resolution", "16", *extra],
         expect, "{tmp}/heads")


def edit(kind, id, control, expect, model="{regional}"):
    case(kind, id, ["edit", "--model", model, "--target", "{bad}/head.ply", "--control", control,
                    "--out", "{tmp}/edited.ply"], expect, "{tmp}/edited.ply")


def ingest(kind, id, manifest, expect, extra=()):
    case(kind, id, ["data", "ingest", "--manifest", manifest, "--out", "{tmp}/dataset", *extra], expect, "{tmp}/dataset")


def resume(id, expect):
    case("json", f"resume-{id.replace('_', '-')}", ["train", "regional", "--data", "{data}", "--out", f"{{bad}}/run_{id}", "--resume", *TINY_REGIONAL],
         expect, f"{{bad}}/run_{id}")


# 1. degenerate geometry ------------------------------------------------------------------------------------
fit("geometry", "fit-6-points", "{bad}/six.xyz", "{bad}/six.xyz")
fit("geometry", "fit-1-point-implicit", "{bad}/one.xyz", "{bad}/one.xyz", model="{implicit}")
fit("geometry", "fit-6-points-implicit", "{bad}/six.xyz", "{bad}/six.xyz", model="{implicit}")
fit("geometry", "fit-50-identical-points", "{bad}/same50.xyz", "{bad}/same50.xyz")
fit("geometry", "fit-50-identical-points-implicit", "{bad}/same50.xyz", "{bad}/same50.xyz", model="{implicit}")
fit("geometry", "fit-collinear-points", "{bad}/line.xyz", "{bad}/line.xyz")
fit("geometry", "fit-cloud-1e30", "{bad}/huge.xyz", "{bad}/huge.xyz")
fit("geometry", "fit-npy-1e30-implicit", "{bad}/huge.npy", "{bad}/huge.npy", model="{implicit}")
fit("geometry", "fit-mesh-1e30", "{bad}/huge.ply", "{bad}/huge.ply")
fit("geometry", "fit-mesh-1e7-mm", "{bad}/big.ply", "{bad}/big.ply")
fit("geometry", "fit-1e300-in-metres", "{bad}/e300.xyz", "{bad}/e300.xyz", extra=("--units", "m"))
fit("geometry", "fit-all-vertices-at-one-point", "{bad}/flat.ply", "{bad}/flat.ply")
fit("geometry", "fit-collinear-landmarks", "{bad}/cloud.xyz", "{bad}/lm_line.txt", extra=("--landmarks", "{bad}/lm_line.txt"))
fit("geometry", "fit-two-landmarks", "{bad}/cloud.xyz", "{bad}/lm_two.txt", extra=("--landmarks", "{bad}/lm_two.txt"))
fit("geometry", "fit-folder-with-3-point-cloud", "{bad}/clouds", "b.xyz", model="{implicit}")
fit("geometry", "fit-depth-1e30-mm", "{bad}/depth_seq", "depth_000.npy", model="{implicit}")
align("geometry", "align-6-points", "{bad}/six.xyz", "{bad}/six.xyz")
align("geometry", "align-50-identical-points", "{bad}/same50.xyz", "{bad}/same50.xyz")
align("geometry", "align-collinear-points", "{bad}/line.xyz", "{bad}/line.xyz")
align("geometry", "align-source-1e30", "{bad}/huge.xyz", "{bad}/huge.xyz")
align("geometry", "align-target-1e30", "{bad}/cloud.xyz", "{bad}/huge.ply", target="{bad}/huge.ply")
align("geometry", "align-target-zero-area", "{bad}/cloud.xyz", "{bad}/flat.ply", target="{bad}/flat.ply")
align("geometry", "align-collinear-source-landmarks", "{bad}/cloud.xyz", "{bad}/lm_line.txt",
      extra=("--source-landmarks", "{bad}/lm_line.txt", "--target-landmarks", "{bad}/lm.txt"))
align("geometry", "align-collinear-target-landmarks", "{bad}/cloud.xyz", "{bad}/lm_line.txt",
      extra=("--source-landmarks", "{bad}/lm.txt", "--target-landmarks", "{bad}/lm_line.txt"))
align("geometry", "align-coincident-landmarks", "{bad}/cloud.xyz", "{bad}/lm_same.txt",
      extra=("--source-landmarks", "{bad}/lm.txt", "--target-landmarks", "{bad}/lm_same.txt"))
align("geometry", "align-two-landmarks", "{bad}/cloud.xyz", "{bad}/lm_two.txt",
      extra=("--source-landmarks", "{bad}/lm_two.txt", "--target-landmarks", "{bad}/lm_two.txt"))
evaluate("geometry", "evaluate-pred-1e30", "{bad}/huge.ply", "{bad}/head.ply", "{bad}/huge.ply")
evaluate("geometry", "evaluate-gt-1e30", "{bad}/head.ply", "{bad}/huge.ply", "{bad}/huge.ply")
evaluate("geometry", "evaluate-cloud-1e30", "{bad}/huge.xyz", "{bad}/head.ply", "{bad}/huge.xyz")
evaluate("geometry", "evaluate-pred-1e200-overflows", "{bad}/huge200.ply", "{bad}/head.ply", "{bad}/huge200.ply")
fit("geometry", "fit-cloud-1e200-overflows", "{bad}/huge200.xyz", "{bad}/huge200.xyz")
case("geometry", "render-1e200-overflows", ["render", "--mesh", "{bad}/huge200.ply", "--out", "{tmp}/r.png", "--size",
     "32"], "{bad}/huge200.ply", "{tmp}/r.png")
case("geometry", "render-1e30", ["render", "--mesh", "{bad}/huge.ply", "--out", "{tmp}/r.png", "--size", "32"],
     "{bad}/huge.ply", "{tmp}/r.png")
case("geometry", "render-errors-against-1e30", ["render", "--mesh", "{bad}/head.ply", "--errors-against",
     "{bad}/huge.ply", "--out", "{tmp}/r.png", "--size", "32"], "{bad}/huge.ply", "{tmp}/r.png")
ingest("geometry", "ingest-meshes-all-vertices-at-one-point", "{ing}/zero.csv", "z0.ply")
ingest("geometry", "ingest-scans-all-vertices-at-one-point", "{ing}/zero.csv", "z0.ply", extra=("--kind", "scans"))
ingest("geometry", "ingest-mesh-1e30", "{ing}/huge.csv", "huge.ply")
case("geometry", "train-on-a-head-without-surface", ["train", "pca", "--data", "{bad}/ds_flat_head", "--out",
     "{tmp}/model"], "{bad}/ds_flat_head", "{tmp}/model")
case("geometry", "train-on-a-head-at-1e10-scale", ["train", "pca", "--data", "{bad}/ds_huge_head", "--out",
     "{tmp}/model"], "{bad}/ds_huge_head", "{tmp}/model")
case("geometry", "info-on-a-head-without-surface", ["data", "info", "--data", "{bad}/ds_flat_head"],
     "{bad}/ds_flat_head")

# 2. non-finite values reaching meshes ---------------------------------------------------------------------------
sample("non-finite", "sample-temperature-nan", "--temperature", extra=("--temperature", "nan"))
sample("non-finite", "sample-temperature-inf", "--temperature", extra=("--temperature", "inf"))
sample("non-finite", "sample-temperature-negative", "--temperature", extra=("--temperature", "-1"))
sample("non-finite", "sample-temperature-1e30", "--temperature", extra=("--temperature", "1e30"))
sample("non-finite", "sample-temperature-nan-implicit", "--temperature", model="{implicit}",
       extra=("--temperature", "nan"))
export("non-finite", "export-latents-3e38", "{bad}/lat_huge.json", latents="{bad}/lat_huge.json")
export("non-finite", "export-latents-1e39-overflow", "{bad}/lat_overflow.json", latents="{bad}/lat_overflow.json")
export("non-finite", "export-latents-nan", "{bad}/lat_nan.json", latents="{bad}/lat_nan.json")
export("non-finite", "export-latents-3e38-implicit", "{bad}/imp_huge.json", model="{implicit}",
       latents="{bad}/imp_huge.json")
case("non-finite", "interpolate-start-3e38", ["interpolate", "--model", "{pca}", "--start", "{bad}/lat_huge.json",
     "--end", "{bad}/ok.json", "--out", "{tmp}/path"], "{bad}/lat_huge.json", "{tmp}/path")
case("non-finite", "interpolate-end-3e38", ["interpolate", "--model", "{pca}", "--start", "{bad}/ok.json",
     "--end", "{bad}/lat_huge.json", "--out", "{tmp}/path"], "{bad}/lat_huge.json", "{tmp}/path")
case("non-finite", "transfer-identity-3e38", ["transfer", "--model", "{pca}", "--identity", "{bad}/lat_huge.json",
     "--expression", "{bad}/ok.json", "--out", "{tmp}/t.ply"], "{bad}/lat_huge.json", "{tmp}/t.ply")
case("non-finite", "transfer-expression-3e38", ["transfer", "--model", "{pca}", "--identity", "{bad}/ok.json",
     "--expression", "{bad}/lat_huge.json", "--out", "{tmp}/t.ply"], "{bad}/lat_huge.json", "{tmp}/t.ply")
export("non-finite", "export-model-nan-weights", "{bad}/m_nan_weights/weights.safetensors", model="{bad}/m_nan_weights")
sample("non-finite", "sample-model-nan-weights", "{bad}/m_nan_weights/weights.safetensors", model="{bad}/m_nan_weights")
fit("non-finite", "fit-model-nan-weights", "{bad}/cloud.xyz", "{bad}/m_nan_weights/weights.safetensors",
    model="{bad}/m_nan_weights")
case("non-finite", "evaluate-model-nan-weights", ["evaluate-model", "--model", "{bad}/m_nan_weights", "--data",
     "{data}", "--out", "{tmp}/quality"], "{bad}/m_nan_weights/weights.safetensors", "{tmp}/quality")
export("non-finite", "export-model-nan-region-weights", "{bad}/m_nan_regions/weights.safetensors",
       model="{bad}/m_nan_regions")
edit("non-finite", "edit-model-nan-region-weights", "{bad}/ctl_rows.json", "{bad}/r_nan_regions/weights.safetensors",
     model="{bad}/r_nan_regions")
sample("non-finite", "sample-implicit-inf-codes", "{bad}/imp_inf/weights.safetensors", model="{bad}/imp_inf")
edit("non-finite", "edit-control-nan", "{bad}/ctl_nan.json", "{bad}/ctl_nan.json")
for flag, value in [("--scan-noise-mm", "nan"), ("--scan-resolution-mm", "nan"), ("--max-jaw-deg", "inf"),
                    ("--max-neck-deg", "nan"), ("--local-fraction", "nan"), ("--test-fraction", "nan")]:
    case("non-finite", f"synth{flag}-{value}", ["data", "synth", "--out", "{tmp}/synth", "--subjects", "2",
         "--expressions", "1", flag, value], flag, "{tmp}/synth")

# 3. JSON (and CSV/YAML) of the wrong shape ------------------------------------------------------------------
for name in ["list", "no_config", "config_list", "config_type", "config_bool", "config_unknown", "config_invalid",
             "no_family", "family_int", "frame_string", "frame_partial", "sizes_strings", "sizes_empty", "no_sizes",
             "region_names_int", "binary"]:
    export("json", f"model-config-{name.replace('_', '-')}", f"{{bad}}/m_{name}/config.json", model=f"{{bad}}/m_{name}")
sample("json", "implicit-config-wrong-type", "{bad}/imp_config_type/config.json", model="{bad}/imp_config_type")
for name in ["list", "strings", "ragged", "objects", "bools", "missing", "array"]:
    export("json", f"latents-{name}", f"{{bad}}/lat_{name}.json", latents=f"{{bad}}/lat_{name}.json")
for name in ["ragged", "strings", "numeric_strings", "bools", "object", "toplevel_list", "rows"]:
    edit("json", f"edit-control-{name.replace('_', '-')}", f"{{bad}}/ctl_{name}.json", f"{{bad}}/ctl_{name}.json")
for name in ["strings.json", "object.json", "nested.json", "bools.json", "empty.json", "binary.yaml"]:
    evaluate("json", f"evaluate-regions-{name.replace('.', '-')}", "{bad}/head.ply", "{bad}/head.ply",
             f"{{bad}}/reg_{name}", extra=("--regions", f"{{bad}}/reg_{name}"))
ingest("json", "ingest-binary-csv-manifest", "{ing}/binary.csv", "{ing}/binary.csv")
ingest("json", "ingest-binary-yaml-manifest", "{ing}/binary.yaml", "{ing}/binary.yaml")
ingest("json", "ingest-regions-strings", "{ing}/ok.csv", "{bad}/reg_strings.json", extra=("--regions", "{bad}/reg_strings.json"))
case("json", "info-binary-dataset-manifest", ["data", "info", "--data", "{bad}/ds_binary_manifest"],
     "{bad}/ds_binary_manifest/manifest.csv")
case("json", "train-binary-dataset-manifest", ["train", "pca", "--data", "{bad}/ds_binary_manifest", "--out",
     "{tmp}/model"], "{bad}/ds_binary_manifest/manifest.csv", "{tmp}/model")
case("json", "evaluate-model-binary-dataset-manifest", ["evaluate-model", "--model", "{pca}", "--data",
     "{bad}/ds_binary_manifest", "--out", "{tmp}/quality"], "{bad}/ds_binary_manifest/manifest.csv", "{tmp}/quality")
case("json", "info-dataset-bad-frame", ["data", "info", "--data", "{bad}/ds_bad_frame"],
     "{bad}/ds_bad_frame/heads.safetensors")
resume("binary_state", "state.json")
resume("list_state", "state.json")
resume("state_without_step", "state.json")
resume("binary_run_config", "run_config.json")
resume("list_run_config", "run_config.json")

# 4. messages that named no file, or the wrong thing ------------------------------------------------------------
evaluate("message", "evaluate-garbage-stl", "{bad}/garbage.stl", "{bad}/head.ply",
         ("{bad}/garbage.stl", "not a readable STL mesh"))
evaluate("message", "evaluate-garbage-off", "{bad}/garbage.off", "{bad}/head.ply",
         ("{bad}/garbage.off", "not a readable OFF mesh"))


def _without_charset_normalizer(monkeypatch):
    """The user's environment without the optional charset_normalizer (trimesh's fallback text decoder)."""
    monkeypatch.setitem(sys.modules, "charset_normalizer", None)


for name in ["latin.stl", "latin.off"]:
    case("message", f"evaluate-non-utf8-{name.replace('.', '-')}-without-charset-normalizer",
         ["evaluate", "--pred", f"{{bad}}/{name}", "--gt", "{bad}/head.ply", "--out", "{tmp}/metrics.json"],
         (f"{{bad}}/{name}", "not a readable"), "{tmp}/metrics.json", setup=_without_charset_normalizer)
case("message", "render-garbage-stl", ["render", "--mesh", "{bad}/garbage.stl", "--out", "{tmp}/r.png"],
     ("{bad}/garbage.stl", "not a readable STL mesh"), "{tmp}/r.png")
ingest("message", "ingest-garbage-stl", "{ing}/garbage.csv", ("garbage.stl", "not a readable STL mesh"))
export("message", "model-wrong-size", ("{bad}/m_wrong_size/weights.safetensors",
                                       "tensor 'identity_basis' has shape (2, 4452, 3)", "expects (3, 4452, 3)"),
       model="{bad}/m_wrong_size")
export("message", "model-missing-tensor", "{bad}/m_no_mean/weights.safetensors", model="{bad}/m_no_mean")
export("message", "model-extra-tensor", "{bad}/m_extra/weights.safetensors", model="{bad}/m_extra")
case("message", "evaluate-model-implicit", ["evaluate-model", "--model", "{implicit}", "--data", "{data}", "--out",
     "{tmp}/quality"], ("{implicit}", "need a mesh family"), "{tmp}/quality")
case("message", "evaluate-model-no-test-split", ["evaluate-model", "--model", "{pca}", "--data", "{bad}/ds_no_test",
     "--out", "{tmp}/quality"], "{bad}/ds_no_test", "{tmp}/quality")
case("message", "train-pca-split-of-one-subject", ["train", "pca", "--data", "{data}", "--split", "test", "--out",
     "{tmp}/model"], "{data}", "{tmp}/model")
evaluate("message", "evaluate-gt-zero-area", "{bad}/head.ply", "{bad}/flat.ply", "{bad}/flat.ply")
fit("message", "fit-kind-registered-wrong-topology", "{bad}/other.ply", "{bad}/other.ply", extra=("--kind", "registered"))
ingest("message", "ingest-yaml-parse-error", "{ing}/broken.yaml", ("{ing}/broken.yaml", "line 4, column 1"))
evaluate("message", "evaluate-regions-yaml-parse-error", "{bad}/head.ply", "{bad}/head.ply",
         ("{bad}/reg_broken.yaml", "line 2, column 6"), extra=("--regions", "{bad}/reg_broken.yaml"))

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), "case ids must be unique"


def _fill(template: str | tuple[str, ...], env: Env, tmp: Path) -> str | tuple[str, ...]:
    if isinstance(template, tuple):
        return tuple(_fill(t, env, tmp) for t in template)
    return template.format(tmp=tmp, **env.paths)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_bad_input_is_one_line_naming_the_culprit(c: Case, env: Env, tmp_path: Path, monkeypatch):
    if c.setup is not None:
        c.setup(monkeypatch)
    out = None if c.out is None else _fill(c.out, env, tmp_path)
    run_bad([_fill(a, env, tmp_path) for a in c.argv], _fill(c.expect, env, tmp_path), out)


# 5. extra manifest columns: accepted, with one warning line naming them -------------------------------------------

@pytest.mark.parametrize("manifest,named", [("extra.csv", "age, colour"), ("extra.yaml", "weight_kg")],
                         ids=["csv-columns", "yaml-keys"])
def test_ingest_warns_about_manifest_columns_it_ignores(env: Env, tmp_path: Path, manifest: str, named: str):
    path = Path(env.paths["ing"]) / manifest
    ran = run_warn(["data", "ingest", "--manifest", path, "--out", tmp_path / "ds"], named)
    assert str(path) in ran.warned[0]
    assert len(HeadDataset.load(tmp_path / "ds").heads) == 4


def test_the_harness_fails_what_it_should(env: Env, tmp_path: Path):
    """run_bad itself: a good invocation, an error naming the wrong thing and a written output all fail it."""
    good = ["export", "--model", env.paths["pca"], "--out", tmp_path / "head.ply"]
    with pytest.raises(AssertionError, match="bad input accepted"):
        run_bad(good, "anything", tmp_path / "head.ply")
    with pytest.raises(AssertionError, match="not in"):
        run_bad(["sample", "--model", env.paths["pca"], "--out", tmp_path / "s", "--temperature", "nan"], "--seed")
    assert _stderr_lines("\rfit:  10%|#   | 1/10\rfit: 100%|####| 10/10\nneuralmorph: error: x: y\n") == \
        (["neuralmorph: error: x: y"], [])


# 6. outputs: never over the user's files, never over or around an input, one line when the disk refuses ------------

@dataclass(frozen=True)
class OutCase:
    id: str
    make: Callable[[Path, dict, object], None] | None
    """Prepares the case's folder (the user's files in the way) given (tmp, Env.paths, monkeypatch)."""
    argv: tuple[str, ...]
    expect: str | tuple[str, ...]
    out: str


def _user_file(name: str, data: bytes = b"the user's own bytes\n"):
    def make(tmp: Path, paths: dict, mp) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    return make


def _user_folder(name: str):
    def make(tmp: Path, paths: dict, mp) -> None:
        (tmp / name).mkdir(parents=True)
        (tmp / name / "notes.txt").write_text("mine")
    return make


def _copy_of(key: str, name: str):
    def make(tmp: Path, paths: dict, mp) -> None:
        shutil.copytree(paths[key], tmp / name)
    return make


def _user_cwd(tmp: Path, paths: dict, mp) -> None:
    (tmp / "notes.txt").write_text("mine")
    mp.chdir(tmp)


def _source_meshes(tmp: Path, paths: dict, mp) -> None:
    (tmp / "src").mkdir()
    for i in range(2):
        shutil.copy(Path(paths["bad"]) / "head.ply", tmp / "src" / f"h{i}.ply")
    (tmp / "src" / "m.csv").write_text("path,subject,expression\nh0.ply,a,neutral\nh1.ply,b,neutral\n")


def _scans_of_our_dataset(tmp: Path, paths: dict, mp) -> None:
    """A manifest listing the raw scans inside an earlier dataset of ours (which --overwrite would replace)."""
    _cli("data", "synth", "--out", tmp / "ds", "--subjects", "2", "--expressions", "1")
    scans = sorted((tmp / "ds" / "scans").iterdir())
    (tmp / "m.csv").write_text("path,subject,expression\n" + "".join(f"ds/scans/{p.name},s{i},neutral\n"
                                                                       for i, p in enumerate(scans)))


def _our_fit(tmp: Path, paths: dict, mp) -> None:
    _cli("fit", "--model", paths["pca"], "--target", Path(paths["bad"]) / "head.ply", "--out", tmp / "fit")


def _our_dataset(tmp: Path, paths: dict, mp) -> None:
    _cli("data", "synth", "--out", tmp / "ds", "--subjects", "2", "--expressions", "1", "--no-scans")


def _locked_run(tmp: Path, paths: dict, mp) -> None:
    from neuralmorph.training.run_folder import claim_run_folder

    claim_run_folder(tmp / "run", resume=False, overwrite=False)  # held by this (live) process: a running run


def _failing(call: str, code: int):
    """The file system refusing: `os.replace` (the commit) or `tempfile.mkstemp/mkdtemp` (the first write)."""
    import errno as _errno  # noqa: F401  (codes are passed in)
    import os
    import tempfile

    def make(tmp: Path, paths: dict, mp) -> None:
        def fail(*args, **kwargs):
            where = kwargs.get("dir") or (args[1] if len(args) > 1 else args[0] if args else tmp)
            raise OSError(code, os.strerror(code), str(where))
        if call == "replace":
            mp.setattr(os, "replace", fail)
        else:
            mp.setattr(tempfile, "mkstemp", fail)
            mp.setattr(tempfile, "mkdtemp", fail)
    return make


def _o(id, make, argv, expect, out):
    return OutCase(id, make, tuple(argv), expect, out)


_SAMPLE = ["sample", "--model", "{pca}", "--n", "1"]
_EXPORT = ["export", "--model", "{pca}"]
_FIT = ["fit", "--model", "{pca}", "--target", "{bad}/head.ply"]
_REG = ["train", "regional", "--data", "{data}", *TINY_REGIONAL]
_ERR = __import__("errno")
OUT_CASES = [
    # the user's files and folders in the way
    _o("sample-out-users-file", _user_file("existing.ply"), [*_SAMPLE, "--out", "{tmp}/existing.ply"],
       ("--out", "existing.ply", "not a folder"), "{tmp}/existing.ply"),
    _o("sample-out-users-folder", _user_folder("folder"), [*_SAMPLE, "--out", "{tmp}/folder"],
       ("{tmp}/folder", "did not write"), "{tmp}/folder"),
    _o("sample-out-users-folder-overwrite", _user_folder("folder"), [*_SAMPLE, "--out", "{tmp}/folder", "--overwrite"],
       ("{tmp}/folder", "did not write"), "{tmp}/folder"),
    _o("sample-out-current-folder", _user_cwd, [*_SAMPLE, "--out", "."], ("--out", "did not write"), "{tmp}"),
    _o("export-out-users-file", _user_file("head.ply"), [*_EXPORT, "--out", "{tmp}/head.ply"],
       ("{tmp}/head.ply", "not an output of neuralmorph"), "{tmp}/head.ply"),
    _o("export-out-users-file-overwrite", _user_file("head.ply", b"ply\ncomment mine\n"),
       [*_EXPORT, "--out", "{tmp}/head.ply", "--overwrite"], ("{tmp}/head.ply", "not an output of neuralmorph"),
       "{tmp}/head.ply"),
    _o("export-out-is-a-folder", _user_folder("head.ply"), [*_EXPORT, "--out", "{tmp}/head.ply"],
       ("{tmp}/head.ply", "is a folder"), "{tmp}/head.ply"),
    _o("export-out-under-a-file", _user_file("file"), [*_EXPORT, "--out", "{tmp}/file/head.ply"],
       ("{tmp}/file", "is a file"), "{tmp}/file"),
    _o("export-out-unknown-suffix", None, [*_EXPORT, "--out", "{tmp}/head.xyz"], ("--out", ".xyz"), "{tmp}/head.xyz"),
    _o("render-out-users-png", _user_file("r.png"), ["render", "--mesh", "{bad}/head.ply", "--out", "{tmp}/r.png"],
       "{tmp}/r.png", "{tmp}/r.png"),
    _o("evaluate-out-users-json", _user_file("m.json", b'{"mine": true}'),
       ["evaluate", "--pred", "{bad}/head.ply", "--gt", "{bad}/head.ply", "--out", "{tmp}/m.json"], "{tmp}/m.json",
       "{tmp}/m.json"),
    _o("evaluate-out-not-json", None, ["evaluate", "--pred", "{bad}/head.ply", "--gt", "{bad}/head.ply", "--out",
                                       "{tmp}/m.txt"], ("--out", "JSON"), "{tmp}/m.txt"),
    _o("interpolate-out-users-file", None, ["interpolate", "--model", "{pca}", "--start", "{bad}/ok.json", "--end",
                                            "{bad}/ok.json", "--out", "{bad}/ok.json"], ("{bad}/ok.json", "not a folder"),
       "{bad}/ok.json"),
    _o("synth-out-users-folder", _user_folder("ds"), ["data", "synth", "--out", "{tmp}/ds", "--subjects", "2"],
       ("{tmp}/ds", "did not write"), "{tmp}/ds"),
    _o("synth-out-earlier-dataset", _our_dataset, ["data", "synth", "--out", "{tmp}/ds", "--subjects", "2"],
       ("{tmp}/ds", "--overwrite"), "{tmp}/ds"),
    _o("demo-out-users-folder", _user_folder("d"), ["demo", "--out", "{tmp}/d"], ("{tmp}/d", "did not write"), "{tmp}/d"),
    _o("observe-out-users-folder", _user_folder("o"), ["data", "observe", "--mesh", "{bad}/head.ply", "--out", "{tmp}/o"],
       ("{tmp}/o", "did not write"), "{tmp}/o"),
    _o("evaluate-model-out-users-folder", _user_folder("q"), ["evaluate-model", "--model", "{pca}", "--data", "{data}",
                                                              "--out", "{tmp}/q"], ("{tmp}/q", "did not write"), "{tmp}/q"),
    _o("bench-fidelity-out-users-file", _user_file("f.json"), ["bench", "fidelity", "--quick", "--out", "{tmp}/f.json"],
       "{tmp}/f.json", "{tmp}/f.json"),
    _o("train-pca-out-users-folder", _user_folder("m"), ["train", "pca", "--data", "{data}", "--out", "{tmp}/m"],
       ("{tmp}/m", "did not write"), "{tmp}/m"),
    _o("train-pca-out-earlier-model", _copy_of("pca", "m"), ["train", "pca", "--data", "{data}", "--out", "{tmp}/m"],
       ("{tmp}/m", "--overwrite"), "{tmp}/m"),
    _o("train-regional-out-users-folder", _user_folder("run"), [*_REG, "--out", "{tmp}/run"],
       ("{tmp}/run", "did not write"), "{tmp}/run"),
    _o("train-regional-resume-nothing", None, [*_REG, "--out", "{tmp}/run", "--resume"],
       ("{tmp}/run", "nothing to resume"), "{tmp}/run"),
    _o("train-regional-resume-and-overwrite", None, [*_REG, "--out", "{tmp}/run", "--resume", "--overwrite"],
       "--resume/--overwrite", "{tmp}/run"),
    _o("train-regional-while-another-runs", _locked_run, [*_REG, "--out", "{tmp}/run", "--overwrite"],
       ("{tmp}/run", "another training run"), "{tmp}/run"),
    # outputs over, inside or around an input
    _o("fit-out-model", None, [*_FIT, "--out", "{pca}"], ("{pca}", "not a fit"), "{pca}"),
    _o("sample-out-model-overwrite", None, [*_SAMPLE, "--out", "{pca}", "--overwrite"], ("{pca}", "not a set of heads"),
       "{pca}"),
    _o("sample-out-inside-model", None, [*_SAMPLE, "--out", "{pca}/heads"], ("--out", "inside the input --model"),
       "{pca}/heads"),
    _o("train-out-inside-data", None, ["train", "pca", "--data", "{data}", "--out", "{data}/model"],
       ("--out", "inside the input --data"), "{data}/model"),
    _o("fit-out-holds-its-target", _our_fit, ["fit", "--model", "{pca}", "--target", "{tmp}/fit/fit.ply", "--out",
                                              "{tmp}/fit", "--overwrite"], ("--out", "contains the input --target"),
       "{tmp}/fit"),
    _o("ingest-out-is-the-source-folder", _source_meshes, ["data", "ingest", "--manifest", "{tmp}/src/m.csv", "--out",
                                                           "{tmp}/src"], "{tmp}/src", "{tmp}/src"),
    _o("ingest-over-the-dataset-holding-its-scans", _scans_of_our_dataset,
       ["data", "ingest", "--manifest", "{tmp}/m.csv", "--out", "{tmp}/ds", "--kind", "scans", "--overwrite"],
       ("--out", "contains the input", "m.csv row 1"), "{tmp}/ds"),
    # a verb's second output in the way: the first is not written either
    _o("transfer-latents-path-is-a-folder", _user_folder("swap.json"),
       ["transfer", "--model", "{pca}", "--identity", "{bad}/ok.json", "--expression", "{bad}/ok.json", "--out",
        "{tmp}/swap.ply"], ("{tmp}/swap.json", "is a folder"), "{tmp}/swap.ply"),
    _o("align-transform-path-is-a-folder", _user_folder("al.json"),
       ["align", "--source", "{bad}/head.ply", "--target", "{bad}/head.ply", "--out", "{tmp}/al.ply"],
       ("{tmp}/al.json", "is a folder"), "{tmp}/al.ply"),
    _o("edit-record-path-is-a-users-file", _user_file("e.json"),
       ["edit", "--model", "{regional}", "--target", "{bad}/head.ply", "--resample-region", "nose", "--out",
        "{tmp}/e.ply"], ("{tmp}/e.json", "not an output of neuralmorph"), "{tmp}/e.ply"),
    # the file system refuses: one line with the path and the system's words, nothing left behind
    _o("export-disk-full", _failing("replace", _ERR.ENOSPC), [*_EXPORT, "--out", "{tmp}/head.ply"],
       "No space left on device", "{tmp}/head.ply"),
    _o("sample-read-only-file-system", _failing("temp", _ERR.EROFS), [*_SAMPLE, "--out", "{tmp}/heads"],
       ("{tmp}", "Read-only file system"), "{tmp}/heads"),
    _o("fit-target-became-a-folder", _failing("replace", _ERR.EISDIR), [*_FIT, "--out", "{tmp}/fit"],
       "Is a directory", "{tmp}/fit"),
    _o("synth-output-appeared", _failing("replace", _ERR.EEXIST), ["data", "synth", "--out", "{tmp}/ds",
                                                                    "--subjects", "2", "--expressions", "1"],
       "File exists", "{tmp}/ds"),
    _o("render-device-busy", _failing("replace", _ERR.EBUSY), ["render", "--mesh", "{bad}/head.ply", "--out",
                                                                "{tmp}/r.png", "--size", "64"],
       "Device or resource busy", "{tmp}/r.png"),
    _o("evaluate-permission-denied", _failing("temp", _ERR.EACCES),
       ["evaluate", "--pred", "{bad}/head.ply", "--gt", "{bad}/head.ply", "--out", "{tmp}/m.json", "--n-points", "500"],
       ("{tmp}", "Permission denied"), "{tmp}/m.json"),
]


@pytest.mark.parametrize("c", OUT_CASES, ids=[c.id for c in OUT_CASES])
def test_outputs_never_replace_what_is_not_ours(c: OutCase, env: Env, tmp_path: Path, monkeypatch):
    if c.make is not None:
        c.make(tmp_path, env.paths, monkeypatch)
    out = Path(_fill(c.out, env, tmp_path))
    inputs = [p for p in tmp_path.rglob("*") if p.is_file() and p != out and out not in p.parents]
    run_bad([_fill(a, env, tmp_path) for a in c.argv], _fill(c.expect, env, tmp_path), out, inputs)


def test_written_outputs_follow_the_umask(env: Env, tmp_path: Path):
    import os

    old = os.umask(0o022)
    try:
        _cli("sample", "--model", env.paths["pca"], "--n", "1", "--out", tmp_path / "heads")
        _cli("export", "--model", env.paths["pca"], "--out", tmp_path / "head.ply")
        _cli("train", "regional", "--data", env.paths["data"], "--out", tmp_path / "run", *TINY_REGIONAL)
    finally:
        os.umask(old)
    for p in [tmp_path / "heads", tmp_path / "run", tmp_path / "run" / "model", tmp_path / "run" / "checkpoints"]:
        assert p.stat().st_mode & 0o777 == 0o755, p
    for p in [tmp_path / "heads" / "sample_000.ply", tmp_path / "head.ply", tmp_path / "run" / "metrics.csv",
              tmp_path / "run" / "model" / "config.json"]:
        assert p.stat().st_mode & 0o777 == 0o644, p
