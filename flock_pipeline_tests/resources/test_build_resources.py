"""build_resources: the environment decides the backends; nothing connects until a call needs it."""

import pytest

from flock_pipeline.resources import ConfigError, LocalChainResource, LocalHubResource, build_resources


def test_local_is_the_default(tmp_path, monkeypatch):
    for name in ("FLOCK_NETWORK", "FLOCK_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    res = build_resources(tmp_path)
    assert isinstance(res["chain"], LocalChainResource) and isinstance(res["hub"], LocalHubResource)


@pytest.mark.parametrize("network", ["test", "finney"])
def test_real_networks_from_the_environment(tmp_path, monkeypatch, network):
    from flock_pipeline.resources.bittensor_chain import BittensorChainResource
    from flock_pipeline.resources.hf_hub import HuggingFaceHubResource

    monkeypatch.setenv("FLOCK_NETWORK", network)
    monkeypatch.setenv("FLOCK_EVAL_REPO", "someone/eval-set")
    monkeypatch.setenv("FLOCK_CHAIN_FALLBACKS", "wss://a.example:443, wss://b.example:443")
    monkeypatch.setenv("FLOCK_TEMPO", "360")
    monkeypatch.setenv("BT_WALLET_HOTKEY", "my-hotkey")
    monkeypatch.setenv("FLOCK_SETTINGS", '{"scoring_mode": "curve", "min_commitment_age": 10}')
    res = build_resources(tmp_path)
    chain, hub, settings = res["chain"], res["hub"], res["settings"]
    assert isinstance(chain, BittensorChainResource) and chain.network == network and chain.tempo == 360
    assert chain.fallback_endpoints == ["wss://a.example:443", "wss://b.example:443"]
    assert isinstance(hub, HuggingFaceHubResource) and hub.offline is False
    assert hub.endpoint == "https://huggingface.co"
    assert settings.eval_repo == "someone/eval-set" and settings.validator_hotkey == "my-hotkey"
    assert settings.scoring_config().mode == "curve" and settings.min_commitment_age == 10


@pytest.mark.parametrize("env, message", [
    ({"FLOCK_NETWORK": "mainnet"}, "use one of"),
    ({"FLOCK_NETWORK": "test"}, "FLOCK_EVAL_REPO"),
    ({"FLOCK_NETWORK": "test", "FLOCK_EVAL_REPO": "a/b", "FLOCK_TEMPO": "ten"}, "FLOCK_TEMPO"),
    ({"FLOCK_SETTINGS": "{"}, "not valid JSON"),
])
def test_configuration_errors(tmp_path, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        build_resources(tmp_path)
