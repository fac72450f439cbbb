"""What the shared workflow asks of every experiment; torch-free, so Snakemake starts fast."""

from __future__ import annotations

from typing import Any, ClassVar


class Experiment:
    """One experiment's wiring for a (schema-validated) config.

    Subclasses set ``name`` (the key under ``experiments:``) and override what they need. The
    rule file ``workflow/rules/<name>.smk`` calls its methods as input/params functions.
    """

    name: ClassVar[str]

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.settings: dict[str, Any] | None = (config.get("experiments") or {}).get(self.name)

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def setting(self, key: str) -> Any:
        """A key of this experiment's section (filled with the schema's default); None if off."""
        return self.settings[key] if self.settings is not None else None

    def check(self, problems: list[str]) -> None:
        """Append what the schema cannot say about this section (names, sizes that must fit)."""

    def models(self) -> list[str]:
        """Shared models (keys of ``models:``) this experiment reads."""
        return []

    def units(self) -> list[str]:
        """Names (models, runs) that are targets of their own: ``snakemake <experiment>_<unit>``
        builds the targets whose path has that name as a component."""
        return []

    def target_groups(self) -> dict[str, list[str]]:
        """``<experiment>_<unit>`` -> its targets, for the per-unit target rules."""
        targets = self.targets()
        return {
            f"{self.name}_{unit}": [t for t in targets if unit in t.split("/")]
            for unit in self.units()
        }

    def caches(self) -> list[tuple[str, str, list[str]]]:
        """(model, dataset, hook patterns) this experiment reads from shared activation stores."""
        return []

    def wildcards(self) -> dict[str, list[str]]:
        """This experiment's wildcard names -> the values they may take."""
        return {}

    def targets(self) -> list[str]:
        """The files a default run of this experiment ends in (figures, checks)."""
        return []
