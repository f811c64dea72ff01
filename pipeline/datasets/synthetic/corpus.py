"""Write the synthetic corpus: speakers and their utterance plan, H.264/AAC mp4s, iden_split.txt, veri_test.txt.

This module writes version 1 (face and voice drawn independently, utterances split at random) and hands version 2
to `corpus_v2`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import ConfigError
from pipeline.datasets.synthetic import corpus_v2
from pipeline.datasets.synthetic.config import ADDED_SETTINGS, GENERATOR_VERSION, SynthConfig
from pipeline.datasets.synthetic.face import Face, render_talking_face, sample_face
from pipeline.datasets.synthetic.voice import Voice, channel_response, mouth_opening, sample_voice, speech
from pipeline.datasets.synthetic.writing import trial_lines, write_mp4, write_text

_VIDEO_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_FIRST_SPEAKER_NUMBER = 10001


@dataclass(frozen=True)
class _Speaker:
    """One synthetic person."""

    id: str  # "id10001", ...
    role: str  # "identification" | "verification"
    face: Face
    voice: Voice
    videos: list[str]  # video ids


@dataclass(frozen=True)
class _Utterance:
    """Where one utterance goes and what makes it reproducible."""

    key: str  # speaker/video/NNNNN
    speaker: int
    video: int
    index: int  # 0-based within its speaker
    n_frames: int


def synthesize(out: Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the corpus under `out` and return `out`: version 1 and version 2's speaker task write the VoxCeleb
    layout (mp4 tree, iden_split.txt, veri_test.txt), the emotion task the RAVDESS layout; all write speakers.json."""
    out = Path(out)
    if cfg.corpus_version == 2:
        return corpus_v2.synthesize(out, cfg, progress)
    speakers = [_sample_speaker(cfg, index) for index in range(cfg.n_speakers + cfg.n_verification_speakers)]
    plan = [utterance for index, speaker in enumerate(speakers) for utterance in _plan_speaker(cfg, speaker, index)]
    for utterance in tqdm(plan, desc="synthesize", unit="utt", disable=not progress):
        speaker = speakers[utterance.speaker]
        audio, frames = _render_utterance(cfg, speaker.face, speaker.voice, utterance)
        path = out / "mp4" / f"{utterance.key}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, frames, audio, cfg.fps, cfg.sample_rate)

    rng = np.random.default_rng([cfg.seed, 3])
    iden = [utterance for utterance in plan if utterance.speaker < cfg.n_speakers]
    veri = [utterance for utterance in plan if utterance.speaker >= cfg.n_speakers]
    write_text(out / "iden_split.txt", _split_lines(rng, iden, cfg.utterances_per_speaker))
    write_text(out / "veri_test.txt", trial_lines(rng, veri, cfg.n_trials))
    write_text(out / "speakers.json", [_speakers_json(cfg, speakers)])
    return out


def synthesize_or_reuse(root: Path, cfg: SynthConfig, who: str) -> Path:
    """`root`'s corpus if its speakers.json records `cfg` and this generator version, else one synthesised there
    (`who`, e.g. "demo", starts the progress line)."""
    recorded = root / "speakers.json"  # written last: a corpus without it was interrupted and is written again
    if recorded.exists():
        made = json.loads(recorded.read_text())
        if recorded_config(made) == asdict(cfg) and made.get("generator_version") == GENERATOR_VERSION:
            tqdm.write(f"{who}: reusing the corpus in {root} (same settings)")
            return root
        raise ConfigError(f"{root}: holds a corpus made with other settings (its speakers.json) than {who} asks "
                          "for; remove it, or use another work directory")
    tqdm.write(f"{who}: synthesising the corpus → {root}")
    return synthesize(root, cfg)


def recorded_config(made: dict) -> dict:
    """The config a speakers.json records, with the settings added since it was written at the values that rendered
    it (None in version 1, where they do not apply)."""
    config = dict(made.get("config") or {})
    for name, value in ADDED_SETTINGS.items():
        config.setdefault(name, value if config.get("corpus_version") == 2 else None)
    return config


def _sample_speaker(cfg: SynthConfig, index: int) -> _Speaker:
    """Speaker `index`: its own seed, so adding speakers never changes the existing ones."""
    rng = np.random.default_rng([cfg.seed, 0, index])
    role = "identification" if index < cfg.n_speakers else "verification"
    face, voice = sample_face(rng), sample_voice(rng)
    return _Speaker(f"id{_FIRST_SPEAKER_NUMBER + index}", role, face, voice, _video_ids(rng, cfg.videos_per_speaker))


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    """YouTube-like 11-character ids."""
    return ["".join(rng.choice(_VIDEO_ID_ALPHABET, 11)) for _ in range(count)]


def _plan_speaker(cfg: SynthConfig, speaker: _Speaker, index: int) -> list[_Utterance]:
    """Assign a speaker's utterances to videos (each video at least one) and draw their lengths."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    n = cfg.utterances_per_speaker
    videos = np.concatenate([np.arange(cfg.videos_per_speaker), rng.integers(cfg.videos_per_speaker, size=n)])
    videos = np.sort(videos[:n])
    seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds, n)
    plan, numbers = [], {}
    for position, (video, length) in enumerate(zip(videos.tolist(), seconds)):
        numbers[video] = numbers.get(video, 0) + 1
        key = f"{speaker.id}/{speaker.videos[video]}/{numbers[video]:05d}"
        plan.append(_Utterance(key, index, video, position, max(1, round(length * cfg.fps))))
    return plan


def _render_utterance(
    cfg: SynthConfig, face: Face, voice: Voice, utterance: _Utterance
) -> tuple[np.ndarray, np.ndarray]:
    """Audio (n,) float32 and frames (T, S, S, 3) uint8 of one utterance, exactly T * sample_rate/fps samples."""
    # Seeds from (corpus seed, speaker, video/utterance): any utterance can be regenerated alone.
    scene_rng = np.random.default_rng([cfg.seed, 4, utterance.speaker, utterance.video])
    rng = np.random.default_rng([cfg.seed, 5, utterance.speaker, utterance.index])
    samples_per_frame = cfg.sample_rate // cfg.fps
    n_samples = utterance.n_frames * samples_per_frame
    # Microphone and room: shared by a video's utterances, plus a smaller per-utterance change.
    channel_db = channel_response(scene_rng, 2.5) + channel_response(rng, 1.5)
    clean = speech(voice, rng, n_samples, cfg.sample_rate, channel_db)
    opening = mouth_opening(clean, samples_per_frame)
    speech_rms = float(np.sqrt(np.mean(clean**2))) + 1e-8
    noisy = clean + rng.normal(0.0, cfg.audio_noise * speech_rms, n_samples)
    audio = (noisy * (rng.uniform(0.35, 0.8) / (np.abs(noisy).max() + 1e-8))).astype(np.float32)
    frames, _ = render_talking_face(face, opening, scene_rng, rng, cfg.frame_size, cfg.fps, cfg.video_noise)
    return audio, frames


def _split_lines(rng: np.random.Generator, utterances: list[_Utterance], per_speaker: int) -> list[str]:
    """iden_split.txt lines: per speaker ~70/10/20 train/val/test, at least 1 val and 2 test."""
    n_test = max(2, round(0.2 * per_speaker))
    n_val = max(1, round(0.1 * per_speaker))
    sets = np.array([3] * n_test + [2] * n_val + [1] * (per_speaker - n_test - n_val))
    by_speaker: dict[int, list[str]] = {}
    for utterance in utterances:
        by_speaker.setdefault(utterance.speaker, []).append(utterance.key)
    lines = []
    for speaker in sorted(by_speaker):
        keys = by_speaker[speaker]
        lines += [f"{split} {key}.wav" for split, key in zip(rng.permutation(sets).tolist(), keys)]
    return lines


def _speakers_json(cfg: SynthConfig, speakers: list[_Speaker]) -> str:
    """Ground truth for documentation: the generator, the config and every speaker's face and voice parameters."""
    truth = {speaker.id: {key: value for key, value in asdict(speaker).items() if key != "id"} for speaker in speakers}
    return json.dumps({"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "speakers": truth}, indent=2)
