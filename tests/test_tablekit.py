import json

from benchmarks.tablekit import write_table


def test_output_is_a_prefix_even_with_dots(tmp_path, capsys):
    """`-o results/grid_s0.5` must not become grid_s0.json (two sparsities would overwrite each other)."""
    for name in ("grid_s0.5", "grid_s0.2", "plain.json"):
        write_table(tmp_path / name, {"name": name}, lambda r: f"| {r['name']} |\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid_s0.2.json", "grid_s0.2.md", "grid_s0.5.json",
                                                          "grid_s0.5.md", "plain.json", "plain.md"]
    assert json.loads((tmp_path / "grid_s0.5.json").read_text()) == {"name": "grid_s0.5"}
    assert (tmp_path / "grid_s0.2.md").read_text() == "| grid_s0.2 |\n"
    assert "| plain.json |" in capsys.readouterr().out
