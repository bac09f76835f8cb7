"""The application builder as a Serve config file reaches it: ``serve run serve_apps/search.yaml``."""

from pathlib import Path

import pytest
import yaml

from ace_ray.serve.app import build
from ace_ray.serve.settings import ServiceSettings, SettingsError, from_mapping

SHIPPED = Path(__file__).parents[2] / "serve_apps" / "search.yaml"


def test_the_shipped_config_builds_the_application_from_settings_that_all_exist():
    (app,) = yaml.safe_load(SHIPPED.read_text())["applications"]
    assert app["import_path"] == "ace_ray.serve.app:build"
    settings = from_mapping(ServiceSettings, app["args"])  # unknown or out-of-range keys would raise here
    assert settings.index == "runs/indexes" and app["name"] == "search" and app["route_prefix"] == "/"


@pytest.mark.parametrize("keys", [["name"], ["route_prefix"], ["name", "route_prefix"]])
def test_an_applications_name_or_route_under_its_args_is_refused_not_ignored(keys):
    with pytest.raises(SettingsError, match=", ".join(keys) + ": set on the application in the Serve config"):
        build({"index": "runs/indexes", **{k: "x" for k in keys}})
