"""The report helpers the benchmark scripts share: result rows, Markdown tables, generated doc sections."""

import numpy as np

from edgeeff.report.benchmarks import machine_info, machine_line, replace_section, report_row
from edgeeff.report.contract import markdown_table
from edgeeff.scoring import score


def test_report_row_has_the_contract_fields_rounded_with_drop_as_reference_minus_artifact():
    logits = np.eye(4, dtype=np.float32)[[0, 1, 2, 2]]  # predicts 0, 1, 2, 2
    labels = np.array([0, 1, 2, 3])
    s = score(logits, labels, reference_top1=np.array([0, 1, 3, 3]))
    row = report_row(s, 80.0, model="lite0", backend="onnxruntime", method="edgeeff", size_bytes=7)
    assert list(row)[:3] == ["model", "backend", "method"]
    assert row["top1"] == 75.0 and row["top1_drop"] == 5.0 and row["top1_agreement"] == 50.0
    assert row["top5"] == 100.0 and row["size_bytes"] == 7
    assert report_row(score(logits, labels), 80.0).keys() == {"top1", "top5", "top1_drop"}  # no reference: no agreement
    assert report_row(s, 1 / 3, top1_drop=0.0)["top1_drop"] == 0.0  # an explicit field wins
    assert report_row(s, 80.0, reference_top1=80.0)["reference_top1"] == 80.0  # a row may carry the reference


def test_markdown_table_has_header_separator_and_rows():
    assert markdown_table([["a", "b"], ["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_replace_section_rewrites_only_between_its_markers_and_appends_when_missing():
    text = "# Doc\n\nkept\n<!-- begin:x -->\nold\n<!-- end:x -->\ntail\n"
    new = replace_section(text, "x", "new table\n")
    assert new == "# Doc\n\nkept\n<!-- begin:x -->\nnew table\n<!-- end:x -->\ntail\n"
    assert replace_section(new, "x", "new table") == new  # idempotent
    added = replace_section(text, "y", "other")
    assert added.startswith(text.rstrip()) and added.endswith("<!-- begin:y -->\nother\n<!-- end:y -->\n")


def test_machine_line_names_cores_cpu_and_load():
    m = machine_info()
    assert m["cpus"] >= 1 and isinstance(m["simd"], list)
    line = machine_line({**m, "cpu": "Some CPU", "cpus": 2, "simd": ["avx2"], "load_average": [0.5, 1.0, 2.0]})
    assert line.startswith("2 x Some CPU (") and "avx2" in line and "0.5/1.0/2.0" in line


def test_artifact_size_is_read_from_disk_and_counts_an_ir_weights_file(tmp_path):
    """An IR's size is its .xml plus .bin, as the files are when asked (the --max-drop fallback
    rewrites the IR after build()); a file that is not here (a device-built engine) has none."""
    from edgeeff.backends.artifact import Artifact
    from edgeeff.models.family import spec_for_variant

    spec = spec_for_variant("lite0")
    (tmp_path / "model_int8.xml").write_bytes(b"x" * 10)
    (tmp_path / "model_int8.bin").write_bytes(b"w" * 100)
    ir = Artifact("model_int8.xml", "openvino", "int8", spec, extra={"weights_file": "model_int8.bin"})
    assert ir.size_bytes(tmp_path) == 110
    (tmp_path / "model_int8.bin").write_bytes(b"w" * 300)  # rewritten with float layers
    assert ir.size_bytes(tmp_path) == 310
    (tmp_path / "model.onnx").write_bytes(b"o" * 7)
    assert Artifact("model.onnx", "onnx", "int8", spec).size_bytes(tmp_path) == 7
    assert Artifact("model.engine", "tensorrt", "int8", spec).size_bytes(tmp_path) is None
