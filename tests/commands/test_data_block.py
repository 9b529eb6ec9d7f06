"""Every command that takes a data source reads the same ``data:`` block, and ``data`` takes a whole fit
config (only data, tasks and out are used), drawing one building per row."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mas_lightning import cli
from mas_lightning.commands.preview import one_sample_per_client
from mas_lightning.data.synthetic import SyntheticData

ROOT = Path(__file__).parents[2]
DATA_COMMANDS = ("fit", "central", "data", "check-data", "prepare-data")


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_each_data_command_parses_the_shared_data_block(command: str, tmp_path: Path) -> None:
    block = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())["data"]
    block["init_args"]["clients"] = 5  # a value that differs from the default: it must arrive
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": block}))
    parser = cli.build_parser({command: cli.COMMANDS[command]})
    parsed = parser.parse_args([command, "-c", str(config)])
    assert parsed[command]["data"]["class_path"] == block["class_path"]
    assert parsed[command]["data"]["init_args"]["clients"] == 5


@pytest.mark.parametrize("command", ("data", "check-data"))
def test_data_commands_take_a_whole_fit_config(command: str) -> None:
    parser = cli.build_parser({command: cli.COMMANDS[command]})
    parsed = parser.parse_args([command, "-c", str(ROOT / "configs" / "mas.yaml")])
    assert parsed[command]["tasks"] == "sdnkt"
    assert parsed[command]["data"]["init_args"]["clients"] == 8


def test_data_command_draws_one_building_per_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = cli.main(["data", "--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", '
                     '"init_args": {"clients": 3, "resolution": 32}}', "--tasks", "dn", "--samples", "4",
                     f"--out={tmp_path}"])
    assert path == tmp_path / "contact_sheet.png" and path.is_file()
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".svg"}
    assert "3 clients" in capsys.readouterr().out
    federated = SyntheticData(clients=3, resolution=32).setup(["depth_zbuffer", "normal"])
    batch, labels = one_sample_per_client(federated, 4)
    names = federated.client_names
    assert labels == [names[0], names[1], names[2], names[0]]  # every building once, then round again
    assert batch["rgb"].shape[0] == 4
    assert (batch["rgb"][3] == federated.clients[0][1]["rgb"]).all()  # the first client's second image


def test_data_command_rejects_bad_samples(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "--samples", "0", f"--out={tmp_path}"])
    assert exit_info.value.code == 2
    assert "samples=0" in capsys.readouterr().err
