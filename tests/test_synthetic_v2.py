"""Corpus version 2: version 1 unchanged, presets, a face that tells about the voice only as far as
shared_strength says, an arousal track in both streams, splits by video, and an emotion task that stage 0 reads
through the RAVDESS adapter with leave-one-speaker-out folds."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import config as config_io
from pipeline.datasets.synthetic import GENERATOR_VERSION, SynthConfig, synthesize, synthesize_or_reuse
from pipeline.datasets.synthetic import corpus as corpus_v1
from pipeline.datasets.synthetic import corpus_v2
from pipeline.datasets.synthetic.corpus_v2 import plan_person, render_take, sample_person
from pipeline.datasets.synthetic.face import render_talking_face
from pipeline.datasets.synthetic.latent import EMOTION_CLASSES, arousal_track, mixed_track
from pipeline.datasets.synthetic.voice import channel_response, speech
from pipeline.manifest import read_manifest

V1 = SynthConfig(n_speakers=2, n_verification_speakers=2, utterances_per_speaker=4, videos_per_speaker=2,
                 min_seconds=0.6, max_seconds=1.0, frame_size=32, n_trials=4, seed=7)
SMALL = {"n_speakers": 3, "utterances_per_speaker": 8, "videos_per_speaker": 4, "min_seconds": 1.0,
         "max_seconds": 1.6, "frame_size": 48}


def test_version_1_is_the_default_and_renders_what_it_always_rendered(tmp_path):
    """Numbers taken from the generator before version 2 existed (same seed, same config)."""
    assert V1.corpus_version == 1 and V1.preset is None and V1.shared_strength is None
    speakers = [corpus_v1._sample_speaker(V1, index) for index in range(4)]
    assert (speakers[0].voice.f0, speakers[0].voice.formants, speakers[1].face.face_width) == (
        138.0, (526.8, 1628.6, 2635.2), 0.3579)
    plan = [u for index, speaker in enumerate(speakers) for u in corpus_v1._plan_speaker(V1, speaker, index)]
    pinned = [("id10001/toCveFPiugn/00001", 44.59055438249564, 109.333984375),
              ("id10001/3rXpmGDqYmU/00001", 36.805251739348655, 121.43307674632354)]
    for utterance, (key, energy, brightness) in zip(plan, pinned):
        speaker = speakers[utterance.speaker]
        audio, frames = corpus_v1._render_utterance(V1, speaker.face, speaker.voice, utterance)
        assert utterance.key == key
        assert float(np.square(audio, dtype=np.float64).sum()) == pytest.approx(energy, rel=1e-5)
        assert float(frames.mean(dtype=np.float64)) == pytest.approx(brightness, rel=1e-5)
    v1_lists = {"iden_split.txt": "9fbe592c930225c62c26ecac13c9245dd4210a68e57db288f763b31bcb13ec75",
                "veri_test.txt": "c01dd46717010e06bdb6267a4444d05e402ba735b91590f30fa92425eb3266b5"}
    out = synthesize(tmp_path / "v1", V1, progress=False)
    for name, digest in v1_lists.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_presets_fill_what_is_not_given_and_version_1_refuses_version_2_settings():
    null = SynthConfig(preset="null", n_speakers=5)
    assert (null.corpus_version, null.shared_strength, null.n_speakers, null.task) == (2, 0.0, 5, "speaker")
    assert SynthConfig(corpus_version=2).preset == "correlated"
    assert SynthConfig(preset="weak-teacher").occlusion > SynthConfig(preset="correlated").occlusion
    rebuilt = config_io.build(SynthConfig, {k: v for k, v in vars(null).items()})
    assert rebuilt == null  # a resolved config (speakers.json's) builds the same corpus again
    with pytest.raises(ValueError, match="shared_strength: version 2 settings"):
        SynthConfig(shared_strength=0.5)
    with pytest.raises(ValueError, match="version 2 settings"):
        SynthConfig(corpus_version=1, preset="null")
    with pytest.raises(ValueError, match="videos_per_speaker must be >= 3"):
        SynthConfig(preset="correlated", videos_per_speaker=2)
    with pytest.raises(ValueError, match="emotion task"):
        SynthConfig(preset="emotion", n_speakers=25)
    with pytest.raises(config_io.ConfigError, match="--shared-strength"):
        config_io.build(SynthConfig, {"preset": "null", "shared_strength": 1.5})


@pytest.mark.parametrize("strength", [0.9, 0.0])
def test_face_size_and_breadth_tell_the_voice_only_with_shared_strength(strength):
    """Across 200 people: face height ↔ formants (tract length), breadth ↔ pitch; and the rendered face box."""
    cfg = SynthConfig(preset="correlated", shared_strength=strength, n_speakers=200)
    people = [sample_person(cfg, index) for index in range(200)]
    height = np.array([p.face.face_height for p in people])
    breadth = np.array([p.face.face_width / p.face.face_height for p in people])
    formants = np.array([np.log(p.voice.formants).mean() for p in people])
    pitch = np.log([p.voice.f0 for p in people])
    rendered = []  # the face's box in pixels, what a teacher sees: its aspect, which camera distance leaves alone
    for index, person in enumerate(people[:60]):
        rng = np.random.default_rng(index)
        _, boxes = render_talking_face(person.face, np.zeros(4), rng, rng, 32, 25, 0.0, pose_jitter=cfg.pose_jitter)
        rendered.append(np.mean((boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])))
    correlations = (np.corrcoef(height, formants)[0, 1], np.corrcoef(breadth, pitch)[0, 1],
                    np.corrcoef(rendered, pitch[:60])[0, 1])
    if strength > 0:
        assert max(correlations) < -0.6, correlations  # bigger face: longer tract; broader face: lower voice
    else:
        assert max(abs(c) for c in correlations) < 0.3, correlations
    other = sample_person(SynthConfig(preset="correlated", shared_strength=0.5), 0)
    assert other.face.skin == people[0].face.skin and other.voice.tilt == people[0].voice.tilt  # same people


def test_the_face_shows_the_voices_arousal_as_far_as_shared_strength_says():
    rng = np.random.default_rng(0)
    tracks = [(arousal_track(rng, 50, 25), arousal_track(rng, 50, 25)) for _ in range(300)]
    for strength, low, high in ((1.0, 0.99, 1.0), (0.6, 0.5, 0.9), (0.0, -0.15, 0.15)):
        seen = [mixed_track(own, other, strength).mean() for own, other in tracks]
        correlation = np.corrcoef([own.mean() for own, _ in tracks], seen)[0, 1]
        assert low <= correlation <= high, (strength, correlation)


def test_arousal_makes_the_same_speech_louder_and_brighter():
    voice = sample_person(SynthConfig(preset="correlated"), 0).voice
    rate, n = 16000, 16000
    measured = {}
    for level in (0.1, 0.9):
        rng = np.random.default_rng(1)  # the same syllables, noise and pitch wobble at both levels
        clean = speech(voice, rng, n, rate, channel_response(rng, 0.0), np.full(25, level), 0.0)
        power = np.abs(np.fft.rfft(clean)) ** 2
        above = np.fft.rfftfreq(n, 1 / rate) >= 1000
        measured[level] = (np.sqrt(np.mean(clean**2)), power[above].sum() / power[~above].sum())
    assert measured[0.9][0] > 1.5 * measured[0.1][0]  # louder
    assert measured[0.9][1] > 1.1 * measured[0.1][1]  # more energy above 1 kHz: the source's tilt opens up


def test_emotion_classes_follow_the_arousal_level_and_contour():
    rng = np.random.default_rng(0)
    for emotion, (level, contour, _) in EMOTION_CLASSES.items():
        tracks = [arousal_track(rng, 75, 25, emotion) for _ in range(40)]
        means = np.array([track.mean() for track in tracks])
        slopes = np.array([track[-10:].mean() - track[:10].mean() for track in tracks])
        assert np.all(means < 0.45) if level == "low" else np.all(means > 0.55), (emotion, means)
        assert np.mean(slopes > 0 if contour == "rising" else slopes < 0) > 0.9, (emotion, slopes)


def test_expression_shows_the_class_on_the_face_and_in_the_voice_and_nowhere_else():
    """Mouth corners up for a rising class, down for a falling one; formants up or down with them and quicker
    syllables when aroused; boxes and truth are the corpus without it; a speaker corpus refuses the setting."""
    plain = SynthConfig(preset="emotion", occlusion=0.0, **SMALL)  # no occluder to hide the mark
    shown = replace(plain, expression=1.0, vocal_expression=1.0)
    person = sample_person(plain, 0)
    takes = {take.emotion: take for take in reversed(plan_person(plain, person, 0))}
    curls, voices = {}, {}
    for emotion, take in takes.items():
        before, after = render_take(plain, person, take), render_take(shown, person, take)
        assert np.array_equal(before[2], after[2]) and before[3] == after[3] and not np.array_equal(before[0], after[0])
        changed = np.abs(after[1].astype(int) - before[1].astype(int)).sum(axis=(0, 3)) > 0  # (S, S) pixels
        assert 0 < changed.mean() < 0.1, emotion  # a mark, not a new face (the mouth moves with the new voice)
        level = 0.8 if EMOTION_CLASSES[emotion][0] == "high" else 0.2
        curls[emotion] = corpus_v2._expression(shown, take, np.full(take.n_frames, level))[1]
        voices[emotion] = corpus_v2._expressed_voice(shown, take, person.voice, np.full(take.n_frames, level))
    assert curls["calm"] > 0.5 and curls["happy"] > 0.5 and curls["sad"] < -0.5 and curls["angry"] < -0.5
    assert voices["happy"].formants[0] == pytest.approx(person.voice.formants[0] * 1.05, abs=0.1)
    assert voices["sad"].formants[2] == pytest.approx(person.voice.formants[2] * 0.95, abs=0.1)
    assert voices["angry"].speaking_rate > person.voice.speaking_rate > voices["calm"].speaking_rate
    null = replace(shown, shared_strength=0.0)  # the face's curl has nothing to do with the class
    assert {corpus_v2._expression(null, take, np.zeros(1))[1] > 0 for take in plan_person(null, person, 0)} == {
        True, False}
    face_only = render_take(replace(plain, expression=1.0), person, takes["happy"])
    assert np.array_equal(face_only[0], render_take(plain, person, takes["happy"])[0])  # each knob its modality
    with pytest.raises(ValueError, match="need the emotion task"):
        SynthConfig(preset="correlated", vocal_expression=1.0)


def test_expression_0_renders_what_the_emotion_preset_rendered_before_it_existed(tmp_path):
    """Numbers taken at the commit before the expression knobs (same config and seed); a speakers.json written then,
    without the new keys, is reused as the same corpus."""
    cfg = SynthConfig(preset="emotion", **SMALL)
    person = sample_person(cfg, 0)
    pinned = [("Actor_01/01-04-01-01-01-01", 83.47510806801509, 141.6031539351852, 3834.6707706451416),
              ("Actor_01/01-02-01-01-01-01", 76.47814710035023, 143.2960551697531, 3297.7552881240845)]
    for take, (key, energy, brightness, box_sum) in zip(plan_person(cfg, person, 0), pinned):
        audio, frames, boxes, _ = render_take(cfg, person, take)
        assert take.key == key
        assert float(np.square(audio, dtype=np.float64).sum()) == pytest.approx(energy, rel=1e-5)
        assert float(frames.mean(dtype=np.float64)) == pytest.approx(brightness, rel=1e-5)
        assert float(boxes.sum()) == pytest.approx(box_sum, rel=1e-6)
    before = {key: value for key, value in asdict(cfg).items() if key not in ("expression", "vocal_expression")}
    (tmp_path / "speakers.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, "config": before}))
    assert synthesize_or_reuse(tmp_path, cfg, "test") == tmp_path
    with pytest.raises(ValueError, match="other settings"):
        synthesize_or_reuse(tmp_path, replace(cfg, expression=1.0), "test")


@pytest.fixture(scope="module")
def v2_corpora(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("synth-v2")
    speaker = SynthConfig(preset="correlated", n_verification_speakers=2, n_trials=10, **SMALL)
    emotion = SynthConfig(preset="emotion", **SMALL)
    return {"speaker": synthesize(work / "speaker", speaker, progress=False),
            "emotion": synthesize(work / "emotion", emotion, progress=False)}


def _truth(root: Path) -> dict[str, dict]:
    with open(root / "utterances.tsv") as handle:
        return {row["key"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.mark.slow
def test_the_speaker_task_is_split_by_video_and_stage_0_reads_it_with_the_true_face_boxes(v2_corpora, tmp_path):
    from stages import prepare

    root = v2_corpora["speaker"]
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, "run_dir": tmp_path, "num_workers": 0,
                                                        "faces": "boxes"}))  # the boxes default to ROOT/boxes
    saved = config_io.load_saved(prepare.PrepareConfig, tmp_path / "prepare" / "config.toml")
    assert saved.boxes_dir == root / "boxes"  # recorded resolved: `avl stage prepare --config` repeats the run
    entries = read_manifest(tmp_path / "prepare")
    splits_of_video: dict[str, set] = {}
    for entry in entries:
        splits_of_video.setdefault(entry.key.rsplit("/", 1)[0], set()).add(entry.split)
    assert all(len(splits) == 1 for splits in splits_of_video.values())  # no video in two splits
    for speaker in ("id10001", "id10002", "id10003"):
        splits = {entry.split for entry in entries if entry.key.startswith(speaker)}
        assert splits == {"train", "val", "test"}
    assert not any(entry.key.startswith(("id10004", "id10005")) and entry.split != "none" for entry in entries)
    truth = _truth(root)
    assert {entry.key: entry.split for entry in entries if entry.split != "none"} == {
        key: row["split"] for key, row in truth.items() if row["split"] != "none"}
    recorded = json.loads((root / "speakers.json").read_text())
    assert recorded["generator_version"] == 2 and recorded["config"]["preset"] == "correlated"
    assert set(recorded["speakers"]["id10001"]["latent"]) == {"shared", "face", "voice"}


@pytest.mark.slow
def test_the_emotion_task_is_a_ravdess_corpus_with_labels_from_the_state(v2_corpora, tmp_path):
    from stages import prepare

    root = v2_corpora["emotion"]
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, "dataset": "ravdess", "fold": 2,
                                                        "classes": "8", "run_dir": tmp_path, "num_workers": 0}))
    entries = read_manifest(tmp_path / "prepare")
    truth = _truth(root)
    assert len(entries) == 3 * 8 and {entry.key for entry in entries} == set(truth)
    assert all(entry.label == truth[entry.key]["emotion"] for entry in entries)  # the filename's code is the class
    assert {entry.split for entry in entries if entry.key.startswith("Actor_02/")} == {"test"}  # leave one out
    assert {entry.split for entry in entries if not entry.key.startswith("Actor_02/")} == {"train", "val"}
    for key, row in truth.items():
        level, contour, _ = EMOTION_CLASSES[row["emotion"]]
        assert (float(row["arousal_mean"]) < 0.5) == (level == "low"), key
        assert (float(row["arousal_slope"]) > 0) == (contour == "rising"), key
    counts = {name: sum(row["emotion"] == name for row in truth.values()) for name in EMOTION_CLASSES}
    assert set(counts.values()) == {6}  # balanced: 8 utterances of 3 actors over 4 classes
    sessions = {(row["speaker"], row["video"], row["emotion"]) for row in truth.values()}
    assert len(sessions) > 3 * 4  # no class is tied to one recording session


def test_plans_put_every_video_in_one_split_with_utterances_in_blocks():
    cfg = SynthConfig(preset="correlated", n_speakers=2, utterances_per_speaker=20, videos_per_speaker=10)
    for index in range(2):
        takes = plan_person(cfg, sample_person(cfg, index), index)
        by_video = {}
        for take in takes:
            by_video.setdefault(take.video, set()).add(take.split)
        assert len(by_video) == 10 and all(len(splits) == 1 for splits in by_video.values())
        splits = [next(iter(by_video[video])) for video in sorted(by_video)]
        assert (splits.count("test"), splits.count("val"), splits.count("train")) == (2, 1, 7)


def test_split_shares_set_how_many_videos_each_split_gets():
    default = SynthConfig(preset="correlated", videos_per_speaker=10)
    assert default.split_counts(10) == (7, 1, 2)  # the paper's 70/10/20
    wide = SynthConfig(preset="correlated", videos_per_speaker=10, test_share=0.5)
    assert wide.split_counts(10) == (4, 1, 5)
    with pytest.raises(ValueError, match="leave no training video of 4"):
        SynthConfig(preset="correlated", videos_per_speaker=4, test_share=0.5, val_share=0.5)
    with pytest.raises(ValueError, match="test_share: version 2 settings"):
        SynthConfig(test_share=0.5)
