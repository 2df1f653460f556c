"""Errors that stop a run before any engine starts, with a message meant for the user."""


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown name, an impossible value, a missing file.

    The CLI prints the message (no traceback) and exits with status 2.
    """


def unknown(group: str, name: object, choices: list[str] | tuple[str, ...]) -> ConfigError:
    """The error for an unknown name in a config group, listing the valid choices."""
    return ConfigError(f"unknown {group} {name!r}; valid choices: {', '.join(sorted(choices))}")


def int_at_least(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer ``>= low``, else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value
