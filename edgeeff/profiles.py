"""Target profiles (targets/*.toml) and calibration recipes (calib/*.toml): data, not code.

Adding a device is adding a file under targets/; adding a calibration recipe, a file under calib/.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .models.family import nearest_names

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`targets/` or `calib/`: inside the wheel (edgeeff/_data/...) or at the repository root."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgeeff data folder {name}/ is missing from this installation")


@dataclass
class TargetProfile:
    name: str
    backend: str
    description: str
    devices: list[str]
    layout: str
    input_dtype: str
    threads: int
    calibration: str  # default recipe name
    quantization: dict
    notes: str = ""
    aliases: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # every field of the file, for backends' own keys

    def to_report(self) -> dict:
        return {"name": self.name, "devices": self.devices, "backend": self.backend,
                "layout": self.layout, "input_dtype": self.input_dtype, "threads": self.threads,
                "notes": self.notes}


def _load_toml(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def all_targets() -> dict[str, TargetProfile]:
    """name and every alias -> profile."""
    table = {}
    for path in sorted(data_dir("targets").glob("*.toml")):
        raw = _load_toml(path)
        profile = TargetProfile(
            name=raw["name"], backend=raw["backend"], description=raw.get("description", ""),
            devices=list(raw.get("devices", [])), layout=raw.get("layout", "NCHW"),
            input_dtype=raw.get("input_dtype", "float32"), threads=int(raw.get("threads", 2)),
            calibration=raw.get("calibration", "minmax"), quantization=dict(raw.get("quantization", {})),
            notes=raw.get("notes", "").strip(), aliases=list(raw.get("aliases", [])), raw=raw)
        for key in [profile.name, *profile.aliases]:
            table[key] = profile
    return table


def get_target(name: str) -> TargetProfile:
    table = all_targets()
    if name not in table:
        raise UserError(f"--target {name}: unknown{nearest_names(name, table)}; known targets: "
                        f"{', '.join(sorted(table))}")
    return table[name]


def all_recipes() -> dict[str, dict]:
    return {p.stem: {"name": p.stem, **_load_toml(p)} for p in sorted(data_dir("calib").glob("*.toml"))}


def get_recipe(name: str) -> dict:
    """A recipe by name, or a path to a recipe file of the user's own."""
    recipes = all_recipes()
    if name in recipes:
        return recipes[name]
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        try:
            return {"name": path.stem, **_load_toml(path)}
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"--calib-method {path}: not valid TOML ({err})") from None
    raise UserError(f"--calib-method {name}: unknown{nearest_names(name, recipes)}; "
                    f"known: {', '.join(recipes)} (or a path to a recipe .toml)")


def _activation(model) -> str | None:
    """The model's activation name (swish, hswish, relu6), which `*_by_activation` entries key on."""
    return model.describe().get("act") if hasattr(model, "describe") else None


def optimize_for_model(target: TargetProfile, model) -> str:
    """The target's --optimize default for the model's activation: `[quantization] optimize`,
    refined by `optimize_by_activation` (chosen by measurement, docs/quantization.md)."""
    act = _activation(model)
    quant = target.quantization
    return dict(quant.get("optimize_by_activation", {})).get(act, quant.get("optimize", "off"))


def quantization_for_model(target: TargetProfile, model) -> dict:
    """The target's [quantization] table with each `<key>_by_activation` entry applied for the
    model's activation (chosen by measurement: `centre_pointwise_inputs` on `jetson-orin`)."""
    act = _activation(model)
    quant = dict(target.quantization)
    for key, by_act in target.quantization.items():
        if key.endswith("_by_activation") and act in by_act and key != "optimize_by_activation":
            quant[key.removesuffix("_by_activation")] = by_act[act]
    return quant


def recipe_for_model(target: TargetProfile, recipe: dict, model) -> dict:
    """The target's default recipe refined for the model's activation (`calibration_by_activation`
    in the target file, chosen by measurement). A recipe the user chose with --calib-method other
    than the target's default is used as given."""
    act = _activation(model)
    by_act = dict(target.raw.get("calibration_by_activation", {}))
    if act in by_act and recipe["name"] == target.calibration:
        return get_recipe(by_act[act])
    return recipe
