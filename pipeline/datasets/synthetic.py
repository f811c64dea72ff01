"""A synthetic talking-face speaker corpus written as real H.264/AAC mp4 files in the VoxCeleb1 layout.

Speakers differ in face (shape, colours, hair, eyes, brows, nose, beard, glasses) and in voice (pitch,
formants, speaking rate, breathiness). Voices are drawn to overlap more than faces, so a video teacher
identifies speakers better than an audio student: the setting in which video is worth distilling.
The mouth opens with the amplitude of the utterance's own clean speech, which links the two streams.
Nothing here is taken from a library: no package renders parametric faces or formant speech.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
from tqdm import tqdm

_VIDEO_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_FIRST_SPEAKER_NUMBER = 10001
# Formant ratios of a few vowels to a neutral (schwa) tract, from classic F1-F3 tables.
_NEUTRAL_FORMANTS = np.array([500.0, 1500.0, 2500.0])
_VOWEL_RATIOS = np.array(
    [
        [1.46, 0.73, 0.98],  # /a/
        [0.54, 1.53, 1.20],  # /i/
        [0.60, 0.58, 0.90],  # /u/
        [1.06, 1.23, 0.99],  # /e/
        [1.14, 0.56, 0.96],  # /o/
        [1.28, 0.79, 0.96],  # /ʌ/
        [1.00, 1.00, 1.00],  # /ə/
    ]
)
_N_FFT = 512
_HOP = 128  # must divide _N_FFT: _overlap_add tiles frames in n_fft / hop phases
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)  # periodic Hann
# Unit-variance Gaussian quantiles for each byte value: random bytes through this table give Gaussian
# pixel noise (8-bit resolution, which pixels cannot exceed) several times faster than standard_normal.
_GAUSSIAN_BYTES = torch.special.ndtri((torch.arange(256, dtype=torch.float64) + 0.5) / 256).numpy()
_GAUSSIAN_BYTES = (_GAUSSIAN_BYTES / _GAUSSIAN_BYTES.std()).astype(np.float32)
_SKIN_LIGHT = np.array([0.96, 0.82, 0.70])
_SKIN_DARK = np.array([0.42, 0.28, 0.19])
_HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.35, 0.2, 0.1], [0.85, 0.7, 0.35], [0.65, 0.25, 0.1], [0.7, 0.7, 0.72], [0.5, 0.35, 0.2]]
)
_IRIS_COLOURS = np.array([[0.3, 0.18, 0.08], [0.25, 0.45, 0.7], [0.3, 0.5, 0.3], [0.1, 0.08, 0.06]])

# Bump when a change makes the same seed produce a different corpus (demo reuse checks it).
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """Size, difficulty and formats of the synthetic corpus."""

    n_speakers: int = 8  # identification speakers (iden_split.txt)
    n_verification_speakers: int = 4  # held-out speakers, only in veri_test.txt
    utterances_per_speaker: int = 16
    videos_per_speaker: int = 4
    min_seconds: float = 2.0
    max_seconds: float = 7.0
    audio_noise: float = 0.5  # additive noise RMS relative to the clean speech RMS
    video_noise: float = 0.03  # per-pixel Gaussian noise std, intensities in [0, 1]
    frame_size: int = 96
    sample_rate: int = 16000
    fps: int = 25
    n_trials: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("SynthConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        """Every constraint the values break, so one error lists them all."""
        problems = []
        if self.n_speakers < 1 or self.n_verification_speakers < 0:
            problems.append("n_speakers must be >= 1 and n_verification_speakers >= 0")
        if self.utterances_per_speaker < 4:
            problems.append("utterances_per_speaker must be >= 4 (train, val and two test utterances)")
        if not 1 <= self.videos_per_speaker <= self.utterances_per_speaker:
            problems.append("videos_per_speaker must be in [1, utterances_per_speaker]")
        if not 0 < self.min_seconds <= self.max_seconds:
            problems.append("need 0 < min_seconds <= max_seconds")
        if self.frame_size < 16 or self.frame_size % 2:
            problems.append("frame_size must be even and >= 16 (yuv420p)")
        if self.fps <= 0 or self.sample_rate % self.fps:
            problems.append("sample_rate must be a multiple of fps (whole samples per video frame)")
        if self.audio_noise < 0 or self.video_noise < 0:
            problems.append("noise levels must be >= 0")
        if self.n_trials < 0 or self.n_trials > self._max_trials():
            problems.append(f"n_trials must be in [0, {self._max_trials()}] for these verification speakers")
        return problems

    def _max_trials(self) -> int:
        """Trials that fit without repeating a pair, half positive, half negative."""
        speakers, utterances = self.n_verification_speakers, self.utterances_per_speaker
        positives = speakers * utterances * (utterances - 1) // 2
        negatives = speakers * (speakers - 1) // 2 * utterances**2
        return 2 * min(positives, negatives)


@dataclass(frozen=True)
class Face:
    """A speaker's face; lengths are in head units (the frame spans 2 units at head scale 1)."""

    face_width: float
    face_height: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_top: float  # hair height above the crown
    hair_bottom: float  # lowest point of the hair, from the face centre (long hair > 0)
    hair_width: float  # hair ellipse width / face width
    hairline: float  # fringe depth as a fraction of face height
    fringe_curve: float
    eye_spacing: float  # half the distance between the eyes / face width
    eye_y: float
    eye_width: float
    eye_height: float
    iris: tuple[float, float, float]
    brow_thickness: float
    brow_tilt: float  # radians
    brow_raise: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    mouth_open: float  # mouth half-height at full loudness
    lips: tuple[float, float, float]
    beard: bool
    glasses: bool


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: source, vocal tract and rhythm."""

    f0: float  # mean pitch, Hz
    formants: tuple[float, float, float]  # F1-F3 of the speaker's neutral vowel, Hz
    bandwidths: tuple[float, float, float]  # Hz
    speaking_rate: float  # syllables per second
    breathiness: float  # aspiration noise relative to the voiced source
    tilt: float  # source spectral roll-off corner, Hz
    jitter: float  # relative pitch wobble


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
    face, voice = _sample_face(rng), _sample_voice(rng)
    return _Speaker(f"id{_FIRST_SPEAKER_NUMBER + index}", role, face, voice, _video_ids(rng, cfg.videos_per_speaker))


def _sample_face(rng: np.random.Generator) -> Face:
    """Draw one face; palettes plus continuous jitter make every face distinct."""
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 0.03, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 0.04, 3)
    face_height = rng.uniform(0.44, 0.56)
    return Face(
        face_width=_r(rng.uniform(0.32, 0.44)),
        face_height=_r(face_height),
        skin=_colour(skin),
        hair=_colour(hair),
        hair_top=_r(rng.uniform(0.03, 0.2)),
        hair_bottom=_r(rng.uniform(-0.25, 0.55)),
        hair_width=_r(rng.uniform(1.03, 1.3)),
        hairline=_r(rng.uniform(0.12, 0.4)),
        fringe_curve=_r(rng.uniform(-0.6, 1.2)),
        eye_spacing=_r(rng.uniform(0.3, 0.5)),
        eye_y=_r(-face_height * rng.uniform(0.05, 0.25)),
        eye_width=_r(rng.uniform(0.055, 0.09)),
        eye_height=_r(rng.uniform(0.025, 0.045)),
        iris=_colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        brow_thickness=_r(rng.uniform(0.012, 0.035)),
        brow_tilt=_r(rng.uniform(-0.35, 0.35)),
        brow_raise=_r(rng.uniform(0.05, 0.1)),
        nose_length=_r(rng.uniform(0.07, 0.16)),
        nose_width=_r(rng.uniform(0.03, 0.065)),
        mouth_width=_r(rng.uniform(0.09, 0.18)),
        mouth_y=_r(face_height * rng.uniform(0.42, 0.58)),
        mouth_open=_r(rng.uniform(0.04, 0.07)),
        lips=_colour(np.array([0.72, 0.3, 0.32]) + rng.normal(0, 0.06, 3)),
        beard=bool(rng.random() < 0.25),
        glasses=bool(rng.random() < 0.25),
    )


def _sample_voice(rng: np.random.Generator) -> Voice:
    """Draw one voice; ranges overlap across speakers so voices are harder to tell apart than faces."""
    tract = rng.uniform(0.93, 1.07)  # vocal tract length factor: every formant scales together
    formants = _NEUTRAL_FORMANTS / tract * rng.uniform(0.97, 1.03, 3)
    return Voice(
        f0=_r(rng.uniform(90, 220), 1),
        formants=tuple(_r(f, 1) for f in formants),
        bandwidths=(_r(rng.uniform(70, 95), 1), _r(rng.uniform(100, 130), 1), _r(rng.uniform(150, 190), 1)),
        speaking_rate=_r(rng.uniform(3.0, 5.5), 2),
        breathiness=_r(rng.uniform(0.05, 0.12)),
        tilt=_r(rng.uniform(300, 450), 1),
        jitter=_r(rng.uniform(0.005, 0.02)),
    )


def _r(value: float, digits: int = 4) -> float:
    """Round a parameter so speakers.json holds exactly the values used."""
    return round(float(value), digits)


def _colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """Clip and round an RGB triple in [0, 1]."""
    return tuple(_r(c, 3) for c in np.clip(rgb, 0.02, 0.98))


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
    channel_db = _channel_response(scene_rng, 2.5) + _channel_response(rng, 1.5)
    clean = _speech(voice, rng, n_samples, cfg.sample_rate, channel_db)
    opening = _mouth_opening(clean, samples_per_frame)
    speech_rms = float(np.sqrt(np.mean(clean**2))) + 1e-8
    noisy = clean + rng.normal(0.0, cfg.audio_noise * speech_rms, n_samples)
    audio = (noisy * (rng.uniform(0.35, 0.8) / (np.abs(noisy).max() + 1e-8))).astype(np.float32)
    frames = _render_frames(face, opening, scene_rng, rng, cfg.frame_size, cfg.fps, cfg.video_noise)
    return audio, frames


# ---- audio -------------------------------------------------------------------------------------


def _channel_response(rng: np.random.Generator, spread_db: float) -> np.ndarray:
    """A smooth random gain over frequency (a microphone/room colouring), in dB, (n_fft/2+1,)."""
    position = np.linspace(0.0, 1.0, _N_FFT // 2 + 1)
    response = np.zeros_like(position)
    for harmonic in range(1, 4):
        response += rng.normal(0, spread_db) * np.cos(np.pi * harmonic * position + rng.uniform(0, 2 * np.pi))
    return response


def _syllables(voice: Voice, rng: np.random.Generator, duration: float) -> np.ndarray:
    """Rows (onset, consonant length, vowel length, vowel index, loudness, pitch accent) in seconds."""
    rows = []
    time = rng.uniform(0.08, 0.25)
    end = duration - rng.uniform(0.08, 0.2)
    while True:
        if rows and rng.random() < 0.12:
            time += rng.uniform(0.15, 0.45)  # a pause between phrases
        length = rng.uniform(0.6, 1.4) / voice.speaking_rate
        if time + length > end:
            break
        consonant = rng.uniform(0.025, 0.07) if rng.random() < 0.65 else 0.0
        vowel = rng.integers(len(_VOWEL_RATIOS))
        rows.append((time, consonant, length - consonant, vowel, rng.uniform(0.5, 1.0), rng.uniform(-0.05, 0.12)))
        time += length
    if not rows:  # too short for one syllable at this rate: one syllable fills the utterance
        start = min(0.05, duration / 4)
        rows.append((start, 0.0, max(duration - 2 * start, 1e-3), 0, 1.0, 0.0))
    return np.array(rows)


def _speech(voice: Voice, rng: np.random.Generator, n_samples: int, rate: int, channel_db: np.ndarray) -> np.ndarray:
    """Clean source-filter speech: harmonic source through time-varying formants, plus consonant noise."""
    duration = n_samples / rate
    syllables = _syllables(voice, rng, duration)
    n_frames = n_samples // _HOP + 1  # STFT frames with centre=True
    frame_times = np.arange(n_frames) * _HOP / rate
    sample_times = np.arange(n_samples) / rate

    f0 = _pitch_track(voice, rng, syllables, frame_times, duration)
    vowel_env, consonant_env = _envelopes(syllables, sample_times)
    source = _harmonic_source(np.interp(sample_times, frame_times, f0), rate)
    voiced = vowel_env * (source + voice.breathiness * rng.standard_normal(n_samples))
    frication = consonant_env * rng.standard_normal(n_samples) * 0.4

    frequencies = np.fft.rfftfreq(_N_FFT, 1.0 / rate)
    formants = _formant_tracks(voice, rng, syllables, frame_times)  # (F, 3)
    vowel_gain = _formant_gain(frequencies, formants, np.array(voice.bandwidths))
    vowel_gain *= 1.0 / (1.0 + frequencies[:, None] / voice.tilt)
    consonant_gain = _frication_gain(rng, syllables, frame_times, frequencies)
    channel = 10.0 ** (channel_db / 20.0)
    voiced_spectrum, frication_spectrum = _stft(np.stack([voiced, frication]))  # each (F, n_freq)
    spectrum = (voiced_spectrum * vowel_gain.T + frication_spectrum * consonant_gain.T) * channel
    return _istft(spectrum, n_samples)


def _pitch_track(
    voice: Voice, rng: np.random.Generator, syllables: np.ndarray, times: np.ndarray, duration: float
) -> np.ndarray:
    """F0 per STFT frame: per-utterance register, declination, accents on syllables, slow jitter."""
    register = voice.f0 * rng.uniform(0.85, 1.15)
    declination = 1.0 + rng.uniform(-0.2, 0.05) * (times / duration - 0.5)
    accents = np.zeros_like(times)
    for onset, consonant, vowel, _, _, accent in syllables:
        centre = onset + consonant + vowel / 2
        accents += accent * np.exp(-0.5 * ((times - centre) / (0.4 * vowel)) ** 2)
    kernel = np.hanning(9) / np.hanning(9).sum()
    wobble = np.convolve(rng.normal(0, voice.jitter * 3, len(times)), kernel, mode="same")
    return register * declination * (1 + accents) * (1 + wobble)


def _envelopes(syllables: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample-level amplitude of the vowels (smooth arcs) and of the consonant bursts before them."""
    vowel_env = np.zeros_like(times)
    consonant_env = np.zeros_like(times)
    for onset, consonant, vowel, _, loudness, _ in syllables:
        start = onset + consonant
        inside = (times >= start) & (times < start + vowel)
        vowel_env[inside] = loudness * np.sin(np.pi * (times[inside] - start) / vowel) ** 0.6
        if consonant > 0:
            burst = (times >= onset) & (times < start)
            consonant_env[burst] = loudness * np.sin(np.pi * (times[burst] - onset) / consonant)
    return vowel_env, consonant_env


def _harmonic_source(f0: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited pulse train (equal-amplitude harmonics below ~0.95 Nyquist), unit RMS, O(n) closed form."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = max(1, int(0.95 * rate / 2 / f0.max()))
    half = np.sin(phase / 2)
    safe = np.where(np.abs(half) < 1e-6, 1.0, half)
    # Dirichlet kernel: sum_{k=1..K} cos(k * phase), with its limit K where the denominator vanishes.
    pulses = np.where(np.abs(half) < 1e-6, harmonics, np.sin((harmonics + 0.5) * phase) / (2 * safe) - 0.5)
    return pulses / math.sqrt(harmonics / 2)


def _formant_tracks(voice: Voice, rng: np.random.Generator, syllables: np.ndarray, times: np.ndarray) -> np.ndarray:
    """F1-F3 per STFT frame: each syllable's vowel around the speaker's tract, smoothed into transitions."""
    tracks = np.tile(np.array(voice.formants), (len(times), 1))
    for onset, _, _, vowel, _, _ in syllables:
        vowel_formants = np.array(voice.formants) * _VOWEL_RATIOS[int(vowel)] * rng.normal(1.0, 0.04, 3)
        tracks[times >= onset] = vowel_formants  # later syllables overwrite: piecewise constant
    kernel = np.ones(5) / 5  # 40 ms transitions
    padded = np.pad(tracks, ((2, 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)


def _formant_gain(frequencies: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Magnitude of cascaded second-order resonators, unit gain at DC: (n_freq, F)."""
    f = frequencies[:, None, None]  # (n_freq, 1, 1)
    centre = formants[None]  # (1, F, 3)
    magnitude = centre**2 / np.sqrt((centre**2 - f**2) ** 2 + (bandwidths * f) ** 2)
    return magnitude.prod(axis=2)


def _frication_gain(
    rng: np.random.Generator, syllables: np.ndarray, times: np.ndarray, frequencies: np.ndarray
) -> np.ndarray:
    """Band-pass shape of each consonant (centre 2-6 kHz, per syllable): (n_freq, F)."""
    centres = np.full(len(times), 4000.0)
    for onset, _, _, _, _, _ in syllables:
        centres[times >= onset] = rng.uniform(2000, 6000)
    return np.exp(-0.5 * ((frequencies[:, None] - centres[None]) / (0.35 * centres[None])) ** 2)


def _stft(signals: np.ndarray) -> np.ndarray:
    """Complex STFT (..., F, n_freq) of (..., n) signals: periodic Hann, hop n_fft/4, centred frames."""
    padded = np.pad(signals, [(0, 0)] * (signals.ndim - 1) + [(_N_FFT // 2, _N_FFT // 2)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT, axis=-1)[..., ::_HOP, :]
    return np.fft.rfft(frames * _WINDOW, axis=-1)


def _istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of _stft for one (F, n_freq) spectrum, trimmed to `length` samples."""
    frames = np.fft.irfft(spectrum, n=_N_FFT, axis=-1) * _WINDOW  # (F, n_fft)
    signal = _overlap_add(frames)
    envelope = _overlap_add(np.broadcast_to(_WINDOW**2, frames.shape))
    trimmed = slice(_N_FFT // 2, _N_FFT // 2 + length)
    return signal[trimmed] / np.maximum(envelope[trimmed], 1e-8)


def _overlap_add(frames: np.ndarray) -> np.ndarray:
    """Sum (F, n_fft) frames at hop _HOP into one signal."""
    overlap = _N_FFT // _HOP
    out = np.zeros((len(frames) + overlap) * _HOP)
    # Frames k, k+overlap, k+2*overlap... tile without gaps: each phase is one reshape and one add.
    for phase in range(overlap):
        block = frames[phase::overlap].reshape(-1)
        out[phase * _HOP : phase * _HOP + len(block)] += block
    return out


def _mouth_opening(clean: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame: RMS of the clean speech over that frame's samples."""
    rms = np.sqrt(np.mean(clean.reshape(-1, samples_per_frame) ** 2, axis=1))
    loud = np.percentile(rms, 95) + 1e-8
    return np.clip(rms / loud, 0.0, 1.0) ** 0.7


# ---- video -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ellipse:
    """An ellipse in head coordinates; ay may vary per frame as a (T, 1, 1) array (blinks, mouth)."""

    cx: float
    cy: float
    ax: float | np.ndarray
    ay: float | np.ndarray
    angle: float = 0.0

    def reach(self) -> float:
        """Radius of a disc around the centre that holds the ellipse in every frame."""
        return float(max(np.max(self.ax), np.max(self.ay)))

    def coverage(self, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] at head coordinates, with a soft edge `edge` wide."""
        dx, dy = x - self.cx, y - self.cy
        if self.angle:
            cos, sin = math.cos(self.angle), math.sin(self.angle)
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        radius = np.sqrt((dx / self.ax) ** 2 + (dy / self.ay) ** 2)
        return np.clip((1.0 - radius) * np.minimum(self.ax, self.ay) / edge + 0.5, 0.0, 1.0)


_Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]  # head (x, y) -> coverage multiplier


class _Painter:
    """Blends head-space shapes into planar frames (3, T, S, S) under a per-frame head pose."""

    def __init__(self, image: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, roll: np.ndarray, scale: float):
        self.image = image
        size = image.shape[-1]
        self.size, self.pixel = size, 2.0 / size  # the frame spans [-1, 1]
        self.grid = (np.arange(size, dtype=np.float32) + 0.5) * self.pixel - 1.0
        self.centre_x = centre_x.astype(np.float32)[:, None, None]  # (T, 1, 1)
        self.centre_y = centre_y.astype(np.float32)[:, None, None]
        self.cos = np.cos(roll).astype(np.float32)[:, None, None]
        self.sin = np.sin(roll).astype(np.float32)[:, None, None]
        self.scale = scale
        self.edge = self.pixel / scale  # one pixel in head units

    def fill(self, shape: _Ellipse, colour, mask: _Mask | None = None) -> None:
        """Paint `shape` in a flat colour, optionally restricted by `mask`; only its pixel box is computed."""
        rows, cols = self._box(shape.cx, shape.cy, shape.reach())
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        x, y = self._head_coords(rows, cols)
        alpha = shape.coverage(x, y, self.edge)
        if mask is not None:
            alpha = alpha * mask(x, y)
        for channel, value in enumerate(colour):
            region = self.image[channel, :, rows, cols]
            region += alpha * (np.float32(value) - region)

    def _box(self, x: float, y: float, radius: float) -> tuple[slice, slice]:
        """Pixel rows and columns that a head-space disc at (x, y) can touch in any frame."""
        image_x = self.centre_x + self.scale * (self.cos * x - self.sin * y)
        image_y = self.centre_y + self.scale * (self.sin * x + self.cos * y)
        reach = self.scale * radius + 2 * self.pixel
        rows = self._span(image_y.min() - reach, image_y.max() + reach)
        return rows, self._span(image_x.min() - reach, image_x.max() + reach)

    def _span(self, low: float, high: float) -> slice:
        first = int(np.clip(math.floor((low + 1.0) / self.pixel), 0, self.size))
        last = int(np.clip(math.ceil((high + 1.0) / self.pixel), 0, self.size))
        return slice(first, last)

    def _head_coords(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Head-space (x, y) of the pixels in a box, each (T, h, w)."""
        dx = (self.grid[cols][None, None, :] - self.centre_x) / self.scale
        dy = (self.grid[rows][None, :, None] - self.centre_y) / self.scale
        return self.cos * dx + self.sin * dy, self.cos * dy - self.sin * dx


def _render_frames(
    face: Face,
    opening: np.ndarray,
    scene_rng: np.random.Generator,
    rng: np.random.Generator,
    size: int,
    fps: int,
    noise: float,
) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 of a talking face in a per-video scene with per-utterance nuisance."""
    count = len(opening)
    # Planar (3, T, S, S): each blend then runs over contiguous per-channel blocks.
    image = np.empty((3, count, size, size), dtype=np.float32)
    image[:] = _background(scene_rng, rng, size)[:, None]
    shirt = scene_rng.uniform(0.05, 0.95, 3)
    painter = _posed_painter(image, scene_rng, rng, fps)
    _draw_head(painter, face, opening.astype(np.float32), shirt, _blinks(rng, count, fps))
    image *= np.float32(255 * rng.uniform(0.8, 1.15))
    if noise > 0:
        image += _GAUSSIAN_BYTES[rng.integers(0, 256, image.shape, dtype=np.uint8)] * np.float32(255 * noise)
    image += np.float32(0.5)  # so that the truncating cast below rounds
    np.clip(image, 0.0, 255.0, out=image)
    return image.transpose(1, 2, 3, 0).astype(np.uint8)


def _background(scene_rng: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """A video's backdrop, (3, S, S): flat colour (slightly varied per utterance) plus a linear light ramp."""
    colour = scene_rng.uniform(0.1, 0.9, 3) + rng.normal(0, 0.04, 3)
    angle, strength = scene_rng.uniform(0, 2 * np.pi), scene_rng.uniform(0, 0.15)
    grid = (np.arange(size) + 0.5) * 2.0 / size - 1.0
    ramp = math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]
    return (colour[:, None, None] + strength * ramp[None]).astype(np.float32)


def _posed_painter(image: np.ndarray, scene_rng: np.random.Generator, rng: np.random.Generator, fps: int) -> _Painter:
    """Head pose per frame: per-video placement, per-utterance offset, scale and roll, slow drift, shake."""
    count = image.shape[1]
    times = np.arange(count) / fps
    base = scene_rng.uniform(-0.06, 0.06, 2) + rng.uniform(-0.03, 0.03, 2) + np.array([0.0, 0.05])
    frequency, phase = rng.uniform(0.1, 0.4, (2, 1)), rng.uniform(0, 2 * np.pi, (2, 1))
    drift = rng.uniform(0, 0.03, (2, 1)) * np.sin(2 * np.pi * frequency * times + phase)
    centre = base[:, None] + drift + rng.normal(0, 0.004, (2, count))
    roll = rng.uniform(-0.08, 0.08) + 0.03 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * times)
    return _Painter(image, centre[0], centre[1], roll, rng.uniform(0.92, 1.08))


def _blinks(rng: np.random.Generator, count: int, fps: int) -> np.ndarray:
    """Eye openness per frame in [0.1, 1]: blinks of ~3 frames about every 3 s."""
    openness = np.ones(count, dtype=np.float32)
    for start in np.flatnonzero(rng.random(count) < 1.0 / (3 * fps)):
        openness[start : start + 3] = [0.5, 0.1, 0.5][: len(openness[start : start + 3])]
    return openness


def _draw_head(painter: _Painter, face: Face, opening: np.ndarray, shirt: np.ndarray, blinks: np.ndarray) -> None:
    """Paint shoulders, neck, hair, face, fringe, beard, eyes, brows, glasses, nose and mouth, back to front."""
    width, height = face.face_width, face.face_height
    skin = np.array(face.skin)
    painter.fill(_Ellipse(0, height + 0.55, 0.9, 0.45), shirt)
    painter.fill(_Ellipse(0, height * 0.9, width * 0.45, 0.3), skin * 0.85)
    hair_top, hair_bottom = -height - face.hair_top, max(face.hair_bottom, -height * 0.2)
    hair = _Ellipse(0, (hair_top + hair_bottom) / 2, width * face.hair_width, (hair_bottom - hair_top) / 2)
    painter.fill(hair, face.hair)
    painter.fill(_Ellipse(0, 0, width, height), skin)
    hairline = -height + 2 * height * face.hairline
    painter.fill(hair, face.hair, mask=_above(hairline, face.fringe_curve, painter.edge))
    if face.beard:
        beard = _Ellipse(0, height * 0.55, width * 0.8, height * 0.5)
        painter.fill(beard, face.hair, mask=_above(face.mouth_y - 0.06, 0.0, painter.edge, invert=True))
    _draw_eyes(painter, face, blinks[:, None, None])
    nose = _Ellipse(0, face.eye_y + face.nose_length * 0.6 + 0.03, face.nose_width, face.nose_length)
    painter.fill(nose, skin * 0.8)
    _draw_mouth(painter, face, opening[:, None, None])


def _above(level: float, curve: float, edge: float, invert: bool = False) -> _Mask:
    """Mask of the region above the curve y = level - curve * x^2 (below it when invert), soft-edged."""

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        distance = (level - curve * x**2) - y
        return np.clip((-distance if invert else distance) / edge + 0.5, 0.0, 1.0)

    return mask


def _inside(shape: _Ellipse, edge: float, invert: bool = False) -> _Mask:
    """Mask of the inside of `shape` (its outside when invert)."""

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        coverage = shape.coverage(x, y, edge)
        return 1.0 - coverage if invert else coverage

    return mask


def _draw_eyes(painter: _Painter, face: Face, openness: np.ndarray) -> None:
    """Sclera, iris (inside the sclera), brows and, for some speakers, glasses."""
    brow_colour = np.array(face.hair) * 0.7
    for side in (-1, 1):
        x, y = side * face.eye_spacing * face.face_width, face.eye_y
        sclera = _Ellipse(x, y, face.eye_width, face.eye_height * openness)
        painter.fill(sclera, (0.93, 0.93, 0.9))
        iris = _Ellipse(x, y, face.eye_height * 0.95, face.eye_height * 0.95)
        painter.fill(iris, face.iris, mask=_inside(sclera, painter.edge))
        brow_y = y - face.eye_height - face.brow_raise
        painter.fill(_Ellipse(x, brow_y, face.eye_width * 1.3, face.brow_thickness, side * face.brow_tilt), brow_colour)
        if face.glasses:
            lens = _Ellipse(x, y, face.eye_width * 1.35, face.eye_width * 1.0)
            frame = _Ellipse(x, y, face.eye_width * 1.6, face.eye_width * 1.28)
            painter.fill(frame, (0.1, 0.1, 0.12), mask=_inside(lens, painter.edge, invert=True))


def _draw_mouth(painter: _Painter, face: Face, opening: np.ndarray) -> None:
    """Lips with a dark opening whose height follows the speech envelope."""
    inner_height = 0.004 + face.mouth_open * opening  # (T, 1, 1)
    painter.fill(_Ellipse(0, face.mouth_y, face.mouth_width, 0.018 + inner_height), face.lips)
    inside = _Ellipse(0, face.mouth_y, face.mouth_width * (0.85 - 0.1 * opening), inner_height)
    painter.fill(inside, (0.22, 0.05, 0.07))


# ---- files -------------------------------------------------------------------------------------


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
