import numpy as np
import pytest
import yaml

from neuralmorph.data.dataset import HeadDataset
from neuralmorph.data.ingest import IngestConfig, ingest
from neuralmorph.errors import InputError
from neuralmorph.geometry.mesh import Mesh, save_mesh


def _export_obj(ds: HeadDataset, folder, rows=None):
    """Write a dataset's registered heads as .obj files plus a CSV manifest, as a user would hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,subject,expression,split"]
    for h in ds.heads if rows is None else [ds.heads[i] for i in rows]:
        name = f"{h.subject}_{h.expression}.obj"
        save_mesh(folder / name, Mesh(ds.vertices[h.registered].astype(np.float64), ds.faces))
        lines.append(f"{name},{h.subject},{h.expression},{h.split}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_ingest_round_trips_a_synth_dataset_written_as_obj(small_synth, tmp_path):
    src = HeadDataset.load(small_synth)
    manifest = _export_obj(src, tmp_path / "objs")
    out = tmp_path / "ingested"
    ingest(IngestConfig(manifest=manifest, out=out), progress=False)
    back = HeadDataset.load(out)
    np.testing.assert_allclose(back.vertices, src.vertices, atol=1e-4)
    np.testing.assert_array_equal(back.faces, src.faces)
    assert [(h.subject, h.expression, h.split) for h in back.heads] == [(h.subject, h.expression, h.split) for h in src.heads]


def test_ingest_yaml_manifest_units_regions_landmarks(small_synth, tmp_path):
    src = HeadDataset.load(small_synth)
    folder = tmp_path / "cm"
    folder.mkdir()
    entries = []
    for h in src.heads[:2]:
        save_mesh(folder / f"{h.expression}.ply", Mesh(src.vertices[h.registered] / 10.0, src.faces))  # centimetres
        entries.append({"path": f"{h.expression}.ply", "subject": h.subject, "expression": h.expression})
    (folder / "m.yaml").write_text(yaml.safe_dump({"heads": entries}))
    n = src.n_vertices
    (folder / "regions.yaml").write_text(yaml.safe_dump({"front": list(range(0, n // 2 + 10)), "back": list(range(n // 2, n))}))
    (folder / "lm.json").write_text(str(src.landmark_ids.tolist()))
    ds = ingest(IngestConfig(manifest=folder / "m.yaml", out=tmp_path / "o", units="cm", regions=folder / "regions.yaml",
                             landmarks=folder / "lm.json"), progress=False)
    np.testing.assert_allclose(ds.vertices, src.vertices[:2], atol=1e-3)
    w = ds.region_weights
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert w[n // 2 + 1].tolist() == [0.5, 0.5]  # overlap shared, never counted twice
    np.testing.assert_array_equal(ds.landmark_ids, src.landmark_ids)


def test_ingest_scans_keeps_each_topology(small_synth, tmp_path):
    src = HeadDataset.load(small_synth)
    lines = ["path,subject,expression"] + [f"{small_synth / h.scan},{h.subject},{h.expression}" for h in src.heads[:2]]
    (tmp_path / "scans.csv").write_text("\n".join(lines) + "\n")
    ds = ingest(IngestConfig(manifest=tmp_path / "scans.csv", out=tmp_path / "o", kind="scans"), progress=False)
    assert ds.vertices is None and all(h.scan for h in ds.heads)
    assert HeadDataset.load(tmp_path / "o").heads == ds.heads


def _bad(tmp_path, small_synth, what):
    src = HeadDataset.load(small_synth)
    manifest = _export_obj(src, tmp_path / "bad", rows=[0, 1])
    second = tmp_path / "bad" / f"{src.heads[1].subject}_{src.heads[1].expression}.obj"
    if what == "vertex count":
        save_mesh(second, Mesh(src.vertices[1, :-7].astype(np.float64), src.faces[:100]))
    elif what == "nan":
        lines = second.read_text().splitlines()
        first_vertex = next(k for k, line in enumerate(lines) if line.startswith("v "))
        lines[first_vertex] = "v nan 0 0"
        second.write_text("\n".join(lines) + "\n")
    elif what == "garbage":
        second.write_bytes(b"\x00\x13garbage\xff" * 50)
    elif what == "missing entry":
        manifest.write_text(manifest.read_text() + ",subjX,neutral,train\n")
    elif what == "missing file":
        second.unlink()
    return manifest, second


@pytest.mark.parametrize("what, expect", [
    ("vertex count", "vertices, expected"),
    ("nan", "NaN"),
    ("garbage", ""),
    ("missing entry", "lacks path"),
    ("missing file", ""),
])
def test_ingest_bad_input_names_the_file_and_writes_nothing(small_synth, tmp_path, what, expect):
    manifest, second = _bad(tmp_path, small_synth, what)
    out = tmp_path / "never"
    with pytest.raises(InputError) as err:
        ingest(IngestConfig(manifest=manifest, out=out), progress=False)
    named = manifest if what == "missing entry" else second
    assert str(named) in str(err.value)
    assert expect in str(err.value)
    assert not out.exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())  # no temp leftovers
