import base64
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from neuralmorph.errors import InputError
from neuralmorph.evaluation.plot import line_plot_svg, nice_ticks
from neuralmorph.evaluation.report import Report, markdownish
from neuralmorph.render import save_png

SVG = "{http://www.w3.org/2000/svg}"


def test_nice_ticks():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    t = nice_ticks(0.13, 9.7)
    assert t[0] <= 0.13 and t[-1] >= 9.7 and 4 <= len(t) <= 8
    steps = np.diff(t)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    flat = nice_ticks(3.0, 3.0)
    assert flat[0] < 3.0 < flat[-1]


def test_line_plot_svg_parses_and_has_one_path_per_series():
    x = np.arange(10.0)
    gap = np.sin(x)
    gap[4] = np.nan
    svg = line_plot_svg({"train <loss>": (x, np.exp(-x)), "val & test": (x, gap)}, "Loss & more", "step", "mm")
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    assert "train &lt;loss&gt;" in svg and "val &amp; test" in svg
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "train <loss>" in texts and "val & test" in texts and "Loss & more" in texts
    groups = [g for g in root.iter(SVG + "g") if g.get("class") == "series"]
    assert [g.get("data-name") for g in groups] == ["train <loss>", "val & test"]
    paths = [g.find(SVG + "path") for g in groups]
    assert all(p is not None for p in paths)
    assert paths[0].get("d").count("M") == 1 and paths[1].get("d").count("M") == 2  # the NaN splits the line
    assert len(groups[1].findall(SVG + "circle")) == 9  # markers on every finite point
    assert paths[0].get("stroke") != paths[1].get("stroke")


def test_line_plot_svg_log_axis_and_edge_cases():
    x = [1, 2, 3, 4]
    svg = line_plot_svg({"a": (x, [100.0, 10.0, 0.0, 1.0])}, "t", "x", "y", log_y=True)
    root = ET.fromstring(svg)
    d = next(root.iter(SVG + "path")).get("d")
    assert d.count("M") == 2  # zero cannot sit on a log axis: a gap, not a crash
    labels = {t.text for t in root.iter(SVG + "text")}
    assert {"1", "10", "100"} <= labels
    ET.fromstring(line_plot_svg({}, "empty", "x", "y"))
    ET.fromstring(line_plot_svg({"nan": ([1, 2], [np.nan, np.nan])}, "all nan", "x", "y"))
    with pytest.raises(ValueError):
        line_plot_svg({"bad": ([1, 2, 3], [1, 2])}, "t", "x", "y")


def test_markdownish_escapes_and_formats():
    out = markdownish("Hello **bold** `a<b>` <script>alert(1)</script>\n\n- one\n- [x](javascript:alert(1))")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<strong>bold</strong>" in out and "<code>a&lt;b&gt;</code>" in out
    assert "<ul><li>one</li>" in out and "href" not in out
    assert '<a href="https://e.org">docs</a>' in markdownish("[docs](https://e.org)")


def test_report_html(tmp_path):
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    img[:, :, 0] = 200
    save_png(tmp_path / "in.png", img[:, :10])
    svg = line_plot_svg({"curve": ([0, 1, 2], [3, 1, 2])}, "Curve", "x", "y")
    r = Report("Fit <report>")
    r.add_text("Text with <script>alert('x')</script> & **bold**.")
    r.add_metrics_table("Metrics", [{"name": "pca", "chamfer_l1_mm": 1.23456, "n": 3},
                                    {"name": "implicit", "chamfer_l1_mm": float("nan"), "n": 4}])
    r.add_metrics_table("Chosen columns", [{"a": 1.0, "b": "x"}], columns=["b", "a"], fmt="{:.1f}")
    r.add_images("Renders", [("array <1>", img), ("file", tmp_path / "in.png")])
    r.add_svg("Curve", '<?xml version="1.0"?>\n' + svg)
    r.add_json("Config", {"seed": 0, "bad": float("inf"), "arr": np.arange(3), "path": tmp_path})
    out = tmp_path / "sub" / "report.html"
    assert r.write(out) == out
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<title>Fit &lt;report&gt;</title>" in html
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "1.235" in html and "\u2014" in html and ">pca<" in html and "chamfer_l1_mm" in html
    assert re.search(r"<th>b</th><th class=\"num\">a</th>", html) and ">1.0<" in html
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2 and base64.b64decode(uris[1]) == (tmp_path / "in.png").read_bytes()
    assert "array &lt;1&gt;" in html
    assert "<svg" in html and "<?xml" not in html and ">curve<" in html
    assert "<details><summary>Config</summary>" in html and '"bad": null' in html and '"arr": [' in html
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from outside
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # atomic: no temp file left
    assert r.to_html() == html  # deterministic


def test_report_refuses_bad_inputs(tmp_path):
    r = Report("x")
    with pytest.raises(ValueError):
        r.add_svg("evil", '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    with pytest.raises(ValueError):
        r.add_svg("evil", '<svg xmlns="http://www.w3.org/2000/svg"><rect onclick="alert(1)"/></svg>')
    with pytest.raises(ValueError):
        r.add_svg("broken", "<svg><g></svg>")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(InputError):
        r.add_images("x", [("fake", tmp_path / "fake.png")])
    with pytest.raises(InputError):
        r.add_images("x", [("missing", tmp_path / "missing.png")])
