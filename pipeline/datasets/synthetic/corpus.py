"""Write the synthetic corpus: speakers and their utterance plan, H.264/AAC mp4s, iden_split.txt, veri_test.txt."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from pipeline.datasets.synthetic.config import GENERATOR_VERSION, SynthConfig
from pipeline.datasets.synthetic.face import Face, render_frames, sample_face
from pipeline.datasets.synthetic.voice import Voice, channel_response, mouth_opening, sample_voice, speech

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
    """Write the corpus (mp4 tree, iden_split.txt, veri_test.txt, speakers.json) under `out`; return `out`."""
    out = Path(out)
    speakers = [_sample_speaker(cfg, index) for index in range(cfg.n_speakers + cfg.n_verification_speakers)]
    plan = [utterance for index, speaker in enumerate(speakers) for utterance in _plan_speaker(cfg, speaker, index)]
    for utterance in tqdm(plan, desc="synthesize", unit="utt", disable=not progress):
        speaker = speakers[utterance.speaker]
        audio, frames = _render_utterance(cfg, speaker.face, speaker.voice, utterance)
        path = out / "mp4" / f"{utterance.key}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_mp4(path, frames, audio, cfg.fps, cfg.sample_rate)

    rng = np.random.default_rng([cfg.seed, 3])
    iden = [utterance for utterance in plan if utterance.speaker < cfg.n_speakers]
    veri = [utterance for utterance in plan if utterance.speaker >= cfg.n_speakers]
    _write_text(out / "iden_split.txt", _split_lines(rng, iden, cfg.utterances_per_speaker))
    _write_text(out / "veri_test.txt", _trial_lines(rng, veri, cfg.n_trials))
    _write_text(out / "speakers.json", [_speakers_json(cfg, speakers)])
    return out


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
    frames = render_frames(face, opening, scene_rng, rng, cfg.frame_size, cfg.fps, cfg.video_noise)
    return audio, frames


def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """Encode H.264 (yuv420p, crf 23) + AAC mono to a temporary name, then move it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with av.open(str(temporary), "w", format="mp4") as container:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            # crf 23 keeps the faces sharp; lower values spend 4x the bytes on encoding the pixel noise.
            video.options = {"crf": "23", "preset": "veryfast"}
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
            sound.bit_rate = 48000
            # One audio frame: the encoder re-blocks it into 1024-sample AAC frames, the muxer interleaves.
            container.mux(sound.encode(_audio_frame(audio, sample_rate)))
            container.mux(sound.encode(None))
            for index, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _audio_frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    """A mono float-planar PyAV frame starting at time 0."""
    planar = np.ascontiguousarray(samples[None, :], dtype=np.float32)  # (channels, n)
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    return frame


def _write_text(path: Path, lines: list[str]) -> None:
    """Write lines atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    temporary.write_text("".join(line + "\n" for line in lines))
    os.replace(temporary, path)


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


def _trial_lines(rng: np.random.Generator, utterances: list[_Utterance], n_trials: int) -> list[str]:
    """veri_test.txt lines: half same-speaker, half different-speaker pairs, no pair twice, none with itself."""
    keys = [utterance.key for utterance in utterances]
    speakers = np.array([utterance.speaker for utterance in utterances])
    n_positive = n_trials // 2
    chosen: set[tuple[int, int]] = set()
    lines = []
    while len(lines) < n_trials:
        positive = len(lines) < n_positive
        enrol = int(rng.integers(len(keys)))
        same = speakers == speakers[enrol]
        candidates = np.flatnonzero(same if positive else ~same)
        candidates = candidates[candidates != enrol]
        test = int(rng.choice(candidates))
        pair = (min(enrol, test), max(enrol, test))
        if pair in chosen:  # config validation guarantees enough distinct pairs exist
            continue
        chosen.add(pair)
        lines.append(f"{int(positive)} {keys[enrol]}.wav {keys[test]}.wav")
    order = rng.permutation(len(lines))
    return [lines[i] for i in order]


def _speakers_json(cfg: SynthConfig, speakers: list[_Speaker]) -> str:
    """Ground truth for documentation: the config and every speaker's face and voice parameters."""
    truth = {speaker.id: {key: value for key, value in asdict(speaker).items() if key != "id"} for speaker in speakers}
    return json.dumps({"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "speakers": truth}, indent=2)
