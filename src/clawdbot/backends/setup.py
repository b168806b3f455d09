"""The fleet as the settings describe it: one backend per [[backends]] table and --ollama-url, or --demo's simulator."""

from __future__ import annotations

from ..modelnames import model_key
from ..settings import Settings
from .base import Backend
from .fleet import Fleet, Member
from .ollama import OllamaBackend
from .routing import Place


def build_fleet(settings: Settings, stand_in_url: str | None = None, stand_in_slots: int | None = None) -> Fleet:
    """Backends as configured; with --demo, the simulator alone (its slots unless --max-running says otherwise)."""
    if stand_in_url is not None:
        slots = settings.generation_slots(stand_in_slots)
        demo = OllamaBackend(settings, stand_in_url, simulated=True)
        return Fleet(
            [Member("demo", "ollama", demo, Place("demo", slots), slots)], settings.health_interval, simulated=True
        )
    members = []
    for config in settings.backend_configs():
        assert config.name is not None  # resolved by backend_configs(), as slots are
        assert config.slots is not None
        backend: Backend
        if config.kind == "openai":
            from .openai import OpenAIBackend

            backend = OpenAIBackend(settings, config.url, api_key=config.api_key(), name=config.name)
        else:
            backend = OllamaBackend(settings, config.url)
        models = None if config.models is None else frozenset(model_key(m) for m in config.models)
        place = Place(config.name, config.slots, models=models)
        members.append(Member(config.name, config.kind, backend, place, config.slots))
    return Fleet(members, settings.health_interval)
