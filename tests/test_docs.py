"""Documentation that must not drift from the code."""

from pathlib import Path

from appliance.config import iter_settings
from appliance.config_loader import env_name

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name, _ in iter_settings() if f"`{name}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    missing_env = [name for name, _ in iter_settings() if env_name(name) not in text]
    assert not missing_env, f"env names missing from docs/configuration.md: {missing_env}"


def test_readme_quick_start_is_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    assert quick.index("./install.sh") < quick.index("./scripts/test.sh")


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_docs_links_in_readme_exist():
    readme = (ROOT / "README.md").read_text()
    for page in ("configuration", "architecture", "api", "operations", "benchmarks"):
        assert f"docs/{page}.md" in readme
        assert (ROOT / "docs" / f"{page}.md").exists(), page
