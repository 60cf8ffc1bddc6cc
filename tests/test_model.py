"""Integration and failure tests of biovita_nb.model: towers, checkpoints, the published release, the Hub, baselines."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import ClapConfig, ClapModel

from biovita_nb.config import init_run, load_config, write_json_atomic
from biovita_nb.model import (CLIP_SAMPLES, MODEL_CONFIGS_DIR, OPEN_CLIP_CONFIG_NAME, PUBLISHED_CLAP_WEIGHTS,
                              BioVITA, CheckpointMismatchError, ModalityUnavailableError, build_audio_tower,
                              build_clap_text_tower, build_image_text_tower, build_model, import_published_release,
                              load_baseline, resolve_tower)

PROMPTS = ["Turdus migratorius", "American robin", "Aves Passeriformes Turdidae Turdus migratorius", "Canis lupus"]


@pytest.fixture(scope="module")
def smoke_model() -> BioVITA:
    return build_model("smoke")


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(4, CLIP_SAMPLES, generator=generator) * 0.1


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail any attempt to open a network connection; the list records the attempts."""
    attempts: list = []

    def reject_connection(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    monkeypatch.setattr(socket.socket, "connect_ex", reject_connection)
    monkeypatch.setattr(socket, "create_connection", reject_connection)
    monkeypatch.setattr(socket, "getaddrinfo", reject_connection)
    return attempts


# Building


def test_build_is_deterministic_and_leaves_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    first = build_model("smoke")
    assert torch.equal(torch.rand(1), expected)

    second = build_model("smoke")
    other_seed = build_model(load_config("smoke", ["seed=1"]))
    for (name, a), (_, b), (_, c) in zip(first.state_dict().items(), second.state_dict().items(),
                                         other_seed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.adapter.weight, other_seed.adapter.weight)
    assert not torch.equal(first.audio.audio_projection.linear1.weight, other_seed.audio.audio_projection.linear1.weight)


def test_model_widths_mirror_published_ratio(smoke_model):
    assert smoke_model.spec["audio_projection_dim"] == 64
    assert smoke_model.embed_dim == 96
    assert smoke_model.adapter.bias is None
    assert math.isclose(smoke_model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


def test_full_size_architectures():
    config = load_config("smoke", {"model": {"image_text": {"name": "full-size-random"},
                                             "audio": {"name": "full-size-random"}}})
    model = build_model(config)
    assert model.embed_dim == 768
    assert model.spec["audio_projection_dim"] == 512
    assert model.spec["image_text"]["open_clip_config"]["model_cfg"]["vision_cfg"]["patch_size"] == 14
    assert list(model.audio.config.depths) == [2, 2, 6, 2]
    with torch.no_grad():
        audio = model.encode_audio(torch.randn(1, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1)
        image = model.encode_image(torch.randn(1, 3, 224, 224))
    assert audio.shape == (1, 768)
    assert image.shape == (1, 768)
    assert [n for n, _ in model.audio_top_parameters(named=True)][0] == "audio.audio_model.audio_encoder.patch_embed.proj.weight"


def test_invalid_tower_names():
    with pytest.raises(ValueError, match="owner/name"):
        resolve_tower("bioclip")
    with pytest.raises(ValueError, match="set revision to null"):
        resolve_tower("tiny-random", "main")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_tower("local-dir:/nonexistent/tower")
    with pytest.raises(ValueError, match="top_layers"):
        build_model(load_config("smoke", ["model.audio.top_layers=upper"]))


# Encoding


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
def test_encoders_unit_norm_and_batch_invariant(smoke_model, clips, pixels, modality):
    batch = {"audio": clips, "image": pixels, "text": PROMPTS}[modality]
    encode = getattr(smoke_model, f"encode_{modality}")
    with torch.no_grad():
        rows = encode(batch)
        assert rows.shape == (4, 96)
        assert torch.allclose(rows.norm(dim=-1), torch.ones(4), atol=1e-5)
        for index in range(4):
            alone = encode(batch[index:index + 1])
            assert torch.allclose(alone[0], rows[index], atol=1e-5), index
        assert torch.allclose(encode(batch[::-1] if modality == "text" else batch.flip(0)), rows.flip(0), atol=1e-5)


def test_preprocess_image_is_deterministic(smoke_model):
    image = Image.new("RGB", (120, 90), (40, 120, 200))
    first, second = smoke_model.preprocess_image(image), smoke_model.preprocess_image(image)
    assert first.shape == (3, 64, 64)
    assert torch.equal(first, second)


def test_encode_rejects_bad_inputs(smoke_model):
    with pytest.raises(ValueError, match="480000 samples"):
        smoke_model.encode_audio(torch.zeros(1, 48_000))
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        smoke_model.encode_audio(torch.zeros(CLIP_SAMPLES))
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        smoke_model.encode_audio(torch.zeros(1, CLIP_SAMPLES, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        smoke_model.encode_image(torch.zeros(1, 1, 64, 64))
    with pytest.raises(TypeError, match="wrap it in a list"):
        smoke_model.encode_text("Canis lupus")
    with pytest.raises(TypeError, match="item 1 is nan"):
        smoke_model.encode_text(["Canis lupus", float("nan")])


def test_truncation_logged_once(smoke_model):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    model_logger = logging.getLogger("biovita_nb.model")
    model_logger.addHandler(handler)
    try:
        before = smoke_model.truncated_prompts
        long_prompt = "Aves Passeriformes Turdidae Turdus migratorius " * 20
        with torch.no_grad():
            smoke_model.encode_text([long_prompt, "Canis lupus", long_prompt])
            smoke_model.encode_text([long_prompt])
    finally:
        model_logger.removeHandler(handler)
    cut_messages = [r for r in records if "is cut to the 77-token context" in r.getMessage()]
    assert smoke_model.truncated_prompts - before == 3
    assert len(cut_messages) == (1 if before == 0 else 0)


def test_forward_returns_all_embeddings(smoke_model, clips, pixels):
    with torch.no_grad():
        out = smoke_model(audio=clips[:2], image=pixels[:2], text=PROMPTS[:2])
    assert set(out) == {"audio", "image", "text", "logit_scale"}
    assert math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)


# Parameter groups


def test_parameter_groups_partition(smoke_model):
    image = {n for n, _ in smoke_model.image_parameters(named=True)}
    text = {n for n, _ in smoke_model.text_parameters(named=True)}
    audio = {n for n, _ in smoke_model.audio_parameters(named=True)}
    everything = {n for n, _ in smoke_model.named_parameters()}
    assert not image & text
    assert not image & audio
    assert not text & audio
    assert everything - image - text - audio == {"adapter.weight", "logit_scale", "image_text.logit_scale"}
    head = {n for n, _ in smoke_model.text_parameters("head", named=True)}
    assert head == {"image_text.positional_embedding", "image_text.ln_final.weight", "image_text.ln_final.bias",
                    "image_text.text_projection"}
    assert {n for n, _ in smoke_model.text_parameters("transformer", named=True)} == text - head
    assert len(smoke_model.text_parameters()) == len(text)
    with pytest.raises(ValueError, match="Invalid text part"):
        smoke_model.text_parameters("body")


def test_audio_top_choices():
    published = build_model("smoke").audio_top_parameters(named=True)
    assert [n for n, _ in published] == [
        "audio.audio_model.audio_encoder.patch_embed.proj.weight", "audio.audio_model.audio_encoder.patch_embed.proj.bias",
        "audio.audio_projection.linear1.weight", "audio.audio_projection.linear1.bias",
        "audio.audio_projection.linear2.weight", "audio.audio_projection.linear2.bias"]
    last_stage = build_model(load_config("smoke", ["model.audio.top_layers=last_stage"]))
    names = [n for n, _ in last_stage.audio_top_parameters(named=True)]
    assert all(n.startswith(("audio.audio_model.audio_encoder.layers.3.", "audio.audio_model.audio_encoder.norm.",
                             "audio.audio_projection.")) for n in names)
    assert "audio.audio_model.audio_encoder.layers.3.blocks.0.attention.self.query.weight" in names
    assert "audio.audio_model.audio_encoder.patch_embed.proj.weight" not in names


# Checkpoints


def test_save_and_load_round_trip(smoke_model, clips, pixels, tmp_path, no_network):
    smoke_model.save_pretrained(tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert record["format"] == "biovita-nb"
    assert record["embed_dim"] == 96
    assert record["image_text"]["name"] == "tiny-random"
    assert record["audio"]["revision"] is None
    assert not [k for k in load_file(tmp_path / "ckpt" / "model.safetensors") if k.startswith("frontend.")]

    loaded = BioVITA.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(clips[:2]), smoke_model.encode_audio(clips[:2]))
        assert torch.equal(loaded.encode_image(pixels), smoke_model.encode_image(pixels))
        assert torch.equal(loaded.encode_text(PROMPTS), smoke_model.encode_text(PROMPTS))
    assert not loaded.training
    assert no_network == []


def test_load_accepts_ddp_prefix(smoke_model, tmp_path):
    folder = smoke_model.save_pretrained(tmp_path / "ckpt")
    state = load_file(folder / "model.safetensors")
    save_file({f"module.{k}": v for k, v in state.items()}, folder / "model.safetensors")
    loaded = BioVITA.from_pretrained(folder)
    assert torch.equal(loaded.adapter.weight, smoke_model.adapter.weight)


def test_load_lists_missing_and_unexpected_keys(smoke_model, tmp_path):
    folder = smoke_model.save_pretrained(tmp_path / "ckpt")
    state = load_file(folder / "model.safetensors")
    state["audio.extra.weight"] = state.pop("audio.audio_projection.linear2.bias")
    state["adapter.weight"] = torch.zeros(3, 3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as caught:
        BioVITA.from_pretrained(folder)
    assert caught.value.missing == ["audio.audio_projection.linear2.bias"]
    assert caught.value.unexpected == ["audio.extra.weight"]
    assert caught.value.mismatched == ["adapter.weight (3, 3) vs (96, 64)"]
    assert "audio.audio_projection.linear2.bias" in str(caught.value)


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="contains no biovita-nb checkpoint"):
        BioVITA.from_pretrained(tmp_path)


# The published release layout


def _write_release(folder: Path, adapter: dict | None = None, extra: dict | None = None) -> tuple:
    """Write a small release in the published layout from the smoke towers; return its parts."""
    folder.mkdir(parents=True, exist_ok=True)
    image_text = build_image_text_tower(resolve_tower("tiny-random"), seed=11)
    (folder / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(image_text.open_clip_config))
    torch.save(image_text.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    torch.manual_seed(12)
    clap = ClapModel(ClapConfig.from_pretrained(MODEL_CONFIGS_DIR / "tiny-random-clap")).eval()
    adapter = {"weight": torch.randn(96, 64)} if adapter is None else adapter
    torch.save({"clap_audio": clap.state_dict(), "audio_adapter": adapter, **(extra or {})}, folder / PUBLISHED_CLAP_WEIGHTS)
    return image_text, clap, adapter


def test_published_release_import(tmp_path, clips, no_network):
    image_text, clap, adapter = _write_release(tmp_path / "release")
    model = BioVITA.from_pretrained(tmp_path / "release", config="smoke")
    with torch.no_grad():
        features = clap.get_audio_features(input_features=model.frontend(clips)).pooler_output
        expected = F.normalize(features @ adapter["weight"].T, dim=-1)
        assert torch.allclose(model.encode_audio(clips), expected, atol=1e-5)
        tokens = image_text.tokenizer(PROMPTS)
        assert torch.allclose(model.encode_text(PROMPTS), F.normalize(image_text.model.encode_text(tokens), dim=-1))
    assert torch.equal(model.audio.audio_projection.linear2.weight, clap.audio_projection.linear2.weight)
    assert model.spec["imported_from"]["audio_architecture"] == "tiny-random"
    assert no_network == []

    model.save_pretrained(tmp_path / "converted")
    converted = BioVITA.from_pretrained(tmp_path / "converted")
    with torch.no_grad():
        assert torch.equal(converted.encode_audio(clips[:1]), model.encode_audio(clips[:1]))


def test_published_release_rejects_pickled_objects(tmp_path):
    _write_release(tmp_path / "release", extra={"args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(ValueError, match="only weights-only loading is allowed"):
        import_published_release(tmp_path / "release", config="smoke")


def test_published_release_wrong_adapter(tmp_path):
    _write_release(tmp_path / "release", adapter={"weight": torch.randn(96, 32)})
    with pytest.raises(CheckpointMismatchError, match=r"weight \(96, 32\) vs \(96, 64\)"):
        import_published_release(tmp_path / "release", config="smoke")


def test_published_release_unknown_clap_keys(tmp_path):
    folder = tmp_path / "release"
    _write_release(folder)
    payload = torch.load(folder / PUBLISHED_CLAP_WEIGHTS, weights_only=True)
    payload["clap_audio"]["fusion_model.weight"] = torch.zeros(1)
    torch.save(payload, folder / PUBLISHED_CLAP_WEIGHTS)
    with pytest.raises(CheckpointMismatchError, match="fusion_model.weight"):
        import_published_release(folder, config="smoke")


# The Hub


def test_push_to_hub_writes_card(smoke_model, tmp_path, monkeypatch, no_network):
    from huggingface_hub import HfApi

    uploads: dict = {}

    def fake_create_repo(self, repo_id, **kwargs):
        uploads["created"] = (repo_id, kwargs.get("private"))

    def fake_upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
        uploads["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        uploads["message"] = commit_message
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)

    run = init_run(load_config("smoke"), name="card-run")
    write_json_atomic(run.results / "results.json", [
        {"model": "stage2", "split": "unseen", "level": "genus", "direction": "I2A", "top1": 33.3, "top5": 66.7,
         "top10": 100.0, "n_queries": 3, "n_candidates": 100, "per_taxon": {}, "per_class": {}}])
    result = smoke_model.push_to_hub("someone/biovita-smoke", run="card-run", private=True, token="not-a-token")

    assert result == "commit-info"
    assert uploads["created"] == ("someone/biovita-smoke", True)
    assert set(uploads["files"]) >= {"README.md", "config.json", "model.safetensors", "open_clip_config.json"}
    card = uploads["files"]["README.md"].decode()
    assert card.startswith("---\nlicense: other\n")
    assert "| stage2 | unseen | genus | I2A | 33.3 | 66.7 | 100.0 | 3 |" in card
    assert "Preset `smoke`, data source `sample`." in card
    assert "- stage1: epochs=2" in card
    assert 'BioVITA.from_pretrained("someone/biovita-smoke")' in card
    assert no_network == []


OFFLINE_SCRIPT = textwrap.dedent("""
    import json, socket, sys
    attempts = []
    def reject_connection(*args, **kwargs):
        attempts.append(repr(args[1:])[:200])
        raise OSError("network access attempted")
    socket.socket.connect = reject_connection
    socket.socket.connect_ex = reject_connection
    socket.create_connection = reject_connection
    socket.getaddrinfo = reject_connection

    import torch
    from biovita_nb.config import load_config
    from biovita_nb.model import BioVITA, build_model, load_baseline

    clip_commit, prompts = sys.argv[1], ["Turdus migratorius", "Canis lupus"]
    config = load_config("smoke", {"model": {"image_text": {"name": "hf-hub:test/tiny-clip", "revision": clip_commit},
                                             "audio": {"name": "test/tiny-clap"}}})
    clips = torch.load(sys.argv[2])
    out = {}
    with torch.no_grad():
        model = build_model(config)
        out["build"] = {"text": model.encode_text(prompts).tolist(), "audio": model.encode_audio(clips).tolist(),
                        "revisions": [model.spec["image_text"]["revision"], model.spec["audio"]["revision"]]}
        clap = load_baseline("clap", config)
        out["clap_text"] = clap.encode_text(prompts).tolist()
        out["checkpoint"] = BioVITA.from_pretrained("test/tiny-biovita").encode_text(prompts).tolist()
        release = BioVITA.from_pretrained("test/tiny-release", config=config)
        out["release"] = release.encode_audio(clips).tolist()
    try:
        build_model(load_config("smoke", {"model": {"audio": {"name": "test/not-cached"}}}))
    except FileNotFoundError as error:
        out["missing"] = str(error)
    out["attempts"] = attempts
    print("RESULT" + json.dumps(out))
""")


def _cache_repo(cache: Path, repo_id: str, commit: str, files: dict[str, Path]) -> None:
    """Lay out one repository in the Hugging Face cache format, with refs/main pointing at `commit`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_offline_hub_cache_loads_without_network(tmp_path, clips, project_root):
    cache, work = tmp_path / "hub", tmp_path / "work"
    work.mkdir()
    clip_commit, clap_commit, ckpt_commit, release_commit = "1" * 40, "2" * 40, "3" * 40, "4" * 40

    image_text = build_image_text_tower(resolve_tower("tiny-random"), seed=21)
    save_file({k: v.contiguous() for k, v in image_text.model.state_dict().items()}, work / "open_clip_model.safetensors")
    (work / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(image_text.open_clip_config))
    _cache_repo(cache, "test/tiny-clip", clip_commit, {OPEN_CLIP_CONFIG_NAME: work / OPEN_CLIP_CONFIG_NAME,
                                                      "open_clip_model.safetensors": work / "open_clip_model.safetensors"})

    torch.manual_seed(22)
    clap = ClapModel(ClapConfig.from_pretrained(MODEL_CONFIGS_DIR / "tiny-random-clap")).eval()
    clap.save_pretrained(work / "clap")
    tokenizer = build_clap_text_tower(resolve_tower("tiny-random")).tokenizer
    tokenizer.save_pretrained(str(work / "clap"))
    _cache_repo(cache, "test/tiny-clap", clap_commit, {p.name: p for p in (work / "clap").iterdir()})

    reference = build_model("smoke")
    reference.save_pretrained(work / "ckpt")
    _cache_repo(cache, "test/tiny-biovita", ckpt_commit, {p.name: p for p in (work / "ckpt").iterdir()})
    _, release_clap, release_adapter = _write_release(work / "release")
    _cache_repo(cache, "test/tiny-release", release_commit, {p.name: p for p in (work / "release").iterdir()})

    torch.save(clips[:2].clone(), work / "clips.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    completed = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, clip_commit, str(work / "clips.pt")],
                               capture_output=True, text=True, env=env, cwd=project_root, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.split("RESULT", 1)[1])
    assert result["attempts"] == []
    assert "test/not-cached at revision main has no config.json in the Hugging Face cache" in result["missing"]

    with torch.no_grad():
        prompts = ["Turdus migratorius", "Canis lupus"]
        expected_text = F.normalize(image_text.model.encode_text(image_text.tokenizer(prompts)), dim=-1)
        assert torch.allclose(torch.tensor(result["build"]["text"]), expected_text, atol=1e-6)
        assert result["build"]["revisions"] == [clip_commit, clap_commit]
        mel = reference.frontend(clips[:2])
        clap_audio = clap.audio_projection(clap.audio_model(input_features=mel).pooler_output)
        expected_audio = F.normalize(reference.adapter(clap_audio), dim=-1)  # same seed, so the same adapter
        assert torch.allclose(torch.tensor(result["build"]["audio"]), expected_audio, atol=1e-5)
        clap_text = clap.get_text_features(**tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                                       return_tensors="pt")).pooler_output
        assert torch.allclose(torch.tensor(result["clap_text"]), clap_text, atol=1e-5)
        assert torch.allclose(torch.tensor(result["checkpoint"]), reference.encode_text(prompts), atol=1e-6)
        release_features = release_clap.get_audio_features(input_features=mel).pooler_output
        expected_release = F.normalize(release_features @ release_adapter["weight"].T, dim=-1)
        assert torch.allclose(torch.tensor(result["release"]), expected_release, atol=1e-5)


# Baselines


@pytest.mark.parametrize("name,width,modalities", [("bioclip2", 96, ("image", "text")),
                                                   ("clap", 64, ("audio", "text")),
                                                   ("random", 96, ("audio", "image", "text"))])
def test_baselines_share_the_interface(name, width, modalities, clips, pixels):
    baseline = load_baseline(name, "smoke")
    assert baseline.modalities == modalities
    inputs = {"audio": clips[:3], "image": pixels[:3], "text": PROMPTS[:3]}
    for modality, batch in inputs.items():
        encode = getattr(baseline, f"encode_{modality}")
        if modality not in modalities:
            with pytest.raises(ModalityUnavailableError, match=f"has no {modality} encoder"):
                encode(batch)
            continue
        with torch.no_grad():
            rows = encode(batch)
            assert rows.shape == (3, width)
            assert torch.allclose(rows.norm(dim=-1), torch.ones(3), atol=1e-5)
            assert torch.allclose(encode(batch[2:3])[0], rows[2], atol=1e-5)


def test_clap_baseline_audio_matches_untrained_biovita_tower(smoke_model, clips):
    clap = load_baseline("clap", "smoke")
    with torch.no_grad():
        expected = F.normalize(smoke_model.audio(input_features=smoke_model.frontend(clips[:2])).audio_embeds, dim=-1)
        assert torch.allclose(clap.encode_audio(clips[:2]), expected, atol=1e-6)


def test_random_baseline_fixed_per_item(clips):
    first, second = load_baseline("random", "smoke"), load_baseline("random", load_config("smoke", ["seed=5"]))
    assert torch.equal(first.encode_audio(clips[:2]), first.encode_audio(clips[:2]))
    assert torch.equal(first.encode_text(["Canis lupus", "Canis latrans"])[1], first.encode_text(["Canis latrans"])[0])
    assert not torch.allclose(first.encode_text(["Canis lupus"]), second.encode_text(["Canis lupus"]))
    rows = first.encode_audio(clips)
    off_diagonal = (rows @ rows.T - torch.eye(4)).abs().max()
    assert off_diagonal < 0.5
    assert first.preprocess_image(Image.new("RGB", (80, 80))).shape == (3, 64, 64)


def test_unknown_baseline():
    with pytest.raises(ValueError, match="Unknown baseline 'clip'"):
        load_baseline("clip", "smoke")
