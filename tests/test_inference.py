"""Audio-only inference with a saved student: embed, predict, verify on synthetic mp4s and real wavs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import config as config_io
from pipeline import checkpoints, inference, runs
from pipeline.manifest import read_manifest
from pipeline.models.students import STUDENTS
from stages import infer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOXCELEB = SHARED / "voxceleb1"
RAVDESS = SHARED / "ravdess"
# A student runs without any of these (PyAV is used, for its audio decoder; torchvision's ResNet blocks too).
TEACHER_SIDE_MODULES = ("pipeline.models.teachers", "stages.prepare", "stages.train_teacher",
                        "stages.export_embeddings", "pipeline.datasets.synthetic", "pipeline.distill")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def student(tiny_run) -> Path:
    """A λ = 0 tiny student trained for two epochs on the tiny run (no teacher cache needed)."""
    from stages import train_student

    return train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": tiny_run / "run", "tiny": True, "lam": 0.0, "epochs": 2, "batch_size": 4, "crop_seconds": 1,
        "num_workers": 0, "device": "cpu", "name": "inference-student"}))


@pytest.fixture(scope="module")
def corpus_files(tiny_run) -> dict[str, Path]:
    """Test-split utterance key → its mp4 in the corpus."""
    entries = read_manifest(tiny_run / "run" / "prepare")
    return {e.key: Path(e.source) for e in entries if e.split == "test"}


def test_saved_student_is_self_contained(student, tiny_run):
    loaded = checkpoints.load_student(student)  # the folder works as well as student.pt
    assert loaded.class_names == (tiny_run / "run" / "prepare" / "classes.txt").read_text().split()
    assert loaded.spectrogram_params.n_fft == 512 and loaded.spectrogram_params.hop_length == 160
    assert loaded.info["lambda"] == 0.0 and loaded.info["arch"] == "resnet"
    with pytest.raises(FileNotFoundError, match="no student checkpoint"):
        checkpoints.load_student(tiny_run / "nowhere")


def test_file_inference_matches_stage_3_evaluation(student, tiny_run, corpus_files):
    """The audio of an mp4, cut as stage 0 cuts it, gives exactly what stage 3 evaluated from the shards."""
    from cache.store import open_store
    from pipeline.media import decode_audio
    from pipeline.evaluate import embed_utterances

    loaded = checkpoints.load_student(student)
    front_end = inference.AudioFrontEnd(loaded.spectrogram_params)
    spectrograms = open_store(runs.find_store(tiny_run / "run" / "prepare", "spectrograms"))
    entries = {e.key: e for e in read_manifest(tiny_run / "run" / "prepare")}
    keys = sorted(corpus_files)
    stored_embeddings, stored_logits = embed_utterances(loaded.model, spectrograms, keys, loaded.device)
    for index, key in enumerate(keys):
        # Stage 0 keeps the audio of whole video frames (640 samples each); the AAC track runs ~24 ms longer.
        audio = decode_audio(corpus_files[key])[: entries[key].n_video_frames * 640]
        spectrogram = front_end.from_audio(audio)
        np.testing.assert_allclose(spectrogram, spectrograms.read(key, "spectrogram").astype(np.float32), atol=1e-3)
        _, logits = inference.run_student(loaded, spectrogram)
        np.testing.assert_allclose(logits, stored_logits[index], rtol=1e-3, atol=1e-3)
    # Whole files, encoder padding included: the same utterances, a slightly different normalisation.
    for index, (path, embedding, _) in enumerate(inference.run_files(loaded, [corpus_files[k] for k in keys])):
        stored = stored_embeddings[index]
        assert embedding @ stored / np.linalg.norm(embedding) / np.linalg.norm(stored) > 0.9, path


def test_front_end_equals_stage_0_on_a_wav(tmp_path):
    """The same waveform through the inference front end and stage 0's LogSpectrogram (float16-rounded)."""
    import av
    import torch

    from pipeline.features import LogSpectrogram, SpectrogramParams
    from pipeline.media import decode_audio

    rng = np.random.default_rng(0)
    samples = (rng.normal(scale=0.1, size=16000 * 2) * 32767).clip(-32768, 32767).astype(np.int16)
    path = tmp_path / "noise.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    params = SpectrogramParams()
    expected = LogSpectrogram(params)(torch.from_numpy(decode_audio(path))).numpy().astype(np.float16)
    np.testing.assert_array_equal(inference.AudioFrontEnd(params)(path), expected.astype(np.float32))


def test_embed_writes_npy_with_keys_and_a_store(student, corpus_files, tmp_path):
    from cache.store import open_store

    files = tuple(sorted(corpus_files.values()))
    npy = infer.embed(infer.EmbedConfig(model=student, files=files, out=tmp_path / "emb.npy"))
    embeddings = np.load(npy)
    assert embeddings.shape == (len(files), 512) and embeddings.dtype == np.float32
    assert infer.keys_path(npy).read_text().split("\n")[:-1] == [str(f) for f in files]
    with pytest.raises(FileExistsError, match="--overwrite"):
        infer.embed(infer.EmbedConfig(model=student, files=files, out=npy))

    for suffix in (".zarr", ".h5"):
        store_path = infer.embed(infer.EmbedConfig(model=student, files=files, out=tmp_path / f"emb{suffix}"))
        store = open_store(store_path)
        assert list(store.keys) == [str(f) for f in files]
        np.testing.assert_allclose(store.read(str(files[0]), "embedding"), embeddings[0], rtol=1e-6)
        assert store.attrs["kind"] == "student-embeddings" and store.attrs["embed_dim"] == 512


def test_predict_table_and_json(student, corpus_files, tiny_run, tmp_path, capsys):
    files = tuple(sorted(corpus_files.values()))
    rows = infer.predict(infer.PredictConfig(model=student, files=files, top_k=10, out=tmp_path / "p.json",
                                             all_probabilities=True))
    classes = (tiny_run / "run" / "prepare" / "classes.txt").read_text().split()
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["class_names"] == classes and len(saved["predictions"]) == len(files)
    for row in saved["predictions"]:
        assert len(row["top_k"]) == len(classes)  # top_k is capped at the number of classes
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["class"] == max(row["probabilities"], key=row["probabilities"].get)
    printed = capsys.readouterr().out + capsys.readouterr().err
    assert str(files[0]) in printed and rows[0]["class"] in printed


def test_verify_scores_a_trial_list_of_mp4s(student, corpus_files, tiny_run, tmp_path):
    root = tiny_run / "corpus"
    keys = sorted(corpus_files)
    relative = {k: corpus_files[k].relative_to(root).as_posix() for k in keys}
    speaker = {k: k.split("/")[0] for k in keys}
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{int(speaker[a] == speaker[b])} {relative[a]} {relative[b]}\n" for a, b in pairs))

    out = infer.verify(infer.VerifyConfig(model=student, trials=trials, root=root, out=tmp_path / "s.tsv"))
    lines = out.read_text().splitlines()
    assert lines[0] == "score\tlabel\tenrol\ttest" and len(lines) == len(pairs) + 1
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["trials"] == len(pairs) and summary["trials_skipped"] == 0
    # The same EER as metrics computed from the embeddings `avl embed` writes.
    from pipeline import metrics

    loaded = checkpoints.load_student(student)
    embedded = {relative[k]: e for k, (_, e, _) in zip(keys, inference.run_files(loaded, [corpus_files[k] for k in keys]))}
    scores = metrics.cosine_scores(embedded, [(relative[a], relative[b]) for a, b in pairs])
    labels = np.array([int(speaker[a] == speaker[b]) for a, b in pairs])
    assert summary["eer"] == pytest.approx(metrics.equal_error_rate(scores, labels), abs=1e-6)
    assert 0 <= summary["min_dcf"]


def test_verify_refuses_missing_files_unless_told(student, tmp_path):
    trials = tmp_path / "t.txt"
    trials.write_text("1 a.wav b.wav\n")
    with pytest.raises(FileNotFoundError, match="--skip-missing"):
        infer.verify(infer.VerifyConfig(model=student, trials=trials, out=tmp_path / "s.tsv"))
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.wav\n")
    from pipeline.datasets.base import DatasetError

    with pytest.raises(DatasetError, match="bad.txt:1"):
        infer.verify(infer.VerifyConfig(model=student, trials=bad, out=tmp_path / "s2.tsv"))


@pytest.mark.skipif(not VOXCELEB.is_dir(), reason="../shared/data/voxceleb1 not present")
def test_cli_on_real_voxceleb_wavs(student, tmp_path):
    """The official veri_test.txt: only its first trial has both files here; then a list over all 8 wavs."""
    wav_root = VOXCELEB / "wav"
    result = _cli("verify", str(student), str(VOXCELEB / "veri_test.txt"), "--root", str(wav_root),
                  "--out", str(tmp_path / "official.tsv"), "--skip-missing")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "official.json").read_text())
    assert summary["trials"] == 1 and summary["trials_skipped"] == 37719 and summary["eer"] is None
    assert "undefined" in result.stdout + result.stderr
    first = (tmp_path / "official.tsv").read_text().splitlines()[1].split("\t")
    assert first[1:] == ["1", "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"]
    assert -1.0 <= float(first[0]) <= 1.0

    wavs = sorted(p.relative_to(wav_root).as_posix() for p in wav_root.rglob("*.wav"))
    pairs = [(a, b) for i, a in enumerate(wavs) for b in wavs[i + 1:]]
    trials = tmp_path / "all.txt"
    trials.write_text("".join(f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for a, b in pairs))
    result = _cli("verify", str(student), str(trials), "--root", str(wav_root), "--out", str(tmp_path / "all.tsv"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "EER" in result.stdout + result.stderr
    summary = json.loads((tmp_path / "all.json").read_text())
    assert summary["trials"] == len(pairs) and 0.0 <= summary["eer"] <= 1.0

    result = _cli("embed", str(student), *(str(wav_root / w) for w in wavs), "--out", str(tmp_path / "vox.npy"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "vox.npy").shape == (len(wavs), 512)


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/ravdess not present")
def test_predict_resamples_48k_wavs_and_imports_no_teacher_code(student, tmp_path):
    """`avl predict` in a fresh interpreter on 48 kHz RAVDESS wavs: runs, and never loads teacher-side code."""
    files = sorted((RAVDESS / "Actor_01").glob("*.wav"))[:2]
    script = (
        "import sys\nfrom pipeline.cli import main\n"
        f"sys.argv = ['avl', 'predict', {str(student)!r}, *{[str(f) for f in files]!r}, '--out', {str(tmp_path / 'r.json')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"bad = [m for m in sys.modules if m in {TEACHER_SIDE_MODULES!r}]\n"
        "print('IMPORTED', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout, result.stdout[-2000:]
    assert len(json.loads((tmp_path / "r.json").read_text())["predictions"]) == 2


def test_bad_inputs_are_clear_errors(student, tmp_path):
    result = _cli("predict", str(student), str(tmp_path / "missing.wav"))
    assert result.returncode == 2 and "missing.wav: no such file" in result.stderr
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    result = _cli("embed", str(student), str(tmp_path / "junk.wav"), "--out", str(tmp_path / "e.npy"))
    assert result.returncode == 2 and "junk.wav" in result.stderr
    result = _cli("embed", str(student), str(tmp_path / "junk.wav"), "--out", str(tmp_path / "e.txt"))
    assert result.returncode == 2 and "--out must end in" in result.stderr


def test_a_checkpoint_that_does_not_fit_its_architecture_is_refused(tmp_path):
    """Weights saved by another version of an architecture: a clear error, not a torch traceback."""
    from dataclasses import asdict

    import torch

    from pipeline.features import SpectrogramParams
    from pipeline.models.spec import ModelSpec
    from pipeline.models.students import build_student

    saved = build_student(ModelSpec("resnet", True, 4))
    torch.save({"spec": asdict(ModelSpec("resnet", True, 3)), "class_names": ["a", "b", "c"],
                "spectrogram": SpectrogramParams().to_dict(), "state_dict": saved.state_dict()}, tmp_path / "s.pt")
    with pytest.raises(checkpoints.CheckpointError, match="do not fit this code's 'resnet' \\(tiny\\) student"):
        checkpoints.load_student(tmp_path / "s.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoints.CheckpointError, match="not a student checkpoint"):
        checkpoints.load_student(tmp_path / "other.pt")


@pytest.mark.parametrize("sequential", [False, True], ids=["plain", "sequential"])
@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_every_registered_student_runs_from_its_checkpoint(arch, sequential, tmp_path):
    """A checkpoint in stage 3's format, for every architecture: loads and embeds a 0.5 s and a 2.3 s input."""
    from dataclasses import asdict

    import torch

    from pipeline.features import SpectrogramParams
    from pipeline.models.spec import ModelSpec
    from pipeline.models.students import build_student

    spec = ModelSpec(arch, True, 3, sequential=sequential)
    torch.save({"spec": asdict(spec), "class_names": ["a", "b", "c"], "spectrogram": SpectrogramParams().to_dict(),
                "method": "proposed", "lambda": 0.5, "state_dict": build_student(spec).state_dict()}, tmp_path / "s.pt")
    loaded = checkpoints.load_student(tmp_path / "s.pt")
    for n_frames in (50, 230):
        spectrogram = np.random.default_rng(0).normal(size=(n_frames, 257)).astype(np.float32)
        embedding, logits = inference.run_student(loaded, spectrogram)
        assert embedding.shape == (512,) and logits.shape == (3,) and np.isfinite(embedding).all()
