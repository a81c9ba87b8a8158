"""Providers are found by name; a third party adds one through an entry point."""

from importlib import metadata

import pytest

from prefect_remote.errors import ProviderNotFound
from prefect_remote.providers import ENTRY_POINT_GROUP, get_provider, provider_class
from prefect_remote.providers.local import LocalProvider


def test_local_is_the_default():
    assert isinstance(get_provider(), LocalProvider)
    assert provider_class("local") is LocalProvider


def test_unknown_provider_says_what_exists():
    with pytest.raises(ProviderNotFound, match=r"provider='nope' is not known; available: .*local"):
        get_provider("nope")


def test_plugin_provider_through_entry_point(monkeypatch):
    class Plugin(LocalProvider):
        name = "plugin"

    plugin_point = metadata.EntryPoint(name="plugin", value="tests.providers.test_registry:PLUGIN", group=ENTRY_POINT_GROUP)
    not_a_provider = metadata.EntryPoint(name="broken", value="tests.providers.test_registry:NOT_A_PROVIDER", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [plugin_point, not_a_provider] if group == ENTRY_POINT_GROUP else [])
    monkeypatch.setitem(globals(), "PLUGIN", Plugin)
    assert provider_class("plugin") is Plugin
    with pytest.raises(ProviderNotFound, match="not a prefect_remote Provider subclass"):
        provider_class("broken")


NOT_A_PROVIDER = object()
