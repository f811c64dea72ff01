"""Formant speech for a synthetic speaker: a harmonic source shaped by time-varying formants in the STFT domain.

No package synthesises parametric formant speech, so the source, the formant and frication filters and the
prosody are written here; the STFT and its overlap-add inverse are torch's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.datasets.synthetic.config import rounded

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
N_FFT = 512
HOP = 128
_WINDOW = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)


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


def sample_voice(rng: np.random.Generator) -> Voice:
    """Draw one voice; ranges overlap across speakers so voices are harder to tell apart than faces."""
    tract = rng.uniform(0.93, 1.07)  # vocal tract length factor: every formant scales together
    formants = _NEUTRAL_FORMANTS / tract * rng.uniform(0.97, 1.03, 3)
    return voice_with(rng, rng.uniform(90, 220), formants)


def voice_with(rng: np.random.Generator, f0: float, formants: np.ndarray) -> Voice:
    """A voice of this pitch and these formants, its source details drawn (in the order corpus v1 draws them)."""
    return Voice(
        f0=rounded(f0, 1),
        formants=tuple(rounded(f, 1) for f in formants),
        bandwidths=tuple(rounded(rng.uniform(low, high), 1) for low, high in ((70, 95), (100, 130), (150, 190))),
        speaking_rate=rounded(rng.uniform(3.0, 5.5), 2),
        breathiness=rounded(rng.uniform(0.05, 0.12)),
        tilt=rounded(rng.uniform(300, 450), 1),
        jitter=rounded(rng.uniform(0.005, 0.02)),
    )


def channel_response(rng: np.random.Generator, spread_db: float) -> np.ndarray:
    """A smooth random gain over frequency (a microphone/room colouring), in dB, (n_fft/2+1,)."""
    position = np.linspace(0.0, 1.0, N_FFT // 2 + 1)
    response = np.zeros_like(position)
    for harmonic in range(1, 4):
        response += rng.normal(0, spread_db) * np.cos(np.pi * harmonic * position + rng.uniform(0, 2 * np.pi))
    return response


def speech(
    voice: Voice,
    rng: np.random.Generator,
    n_samples: int,
    rate: int,
    channel_db: np.ndarray,
    arousal: np.ndarray | None = None,
    register_spread: float = 0.15,
) -> np.ndarray:
    """Clean source-filter speech: harmonic source through time-varying formants, plus consonant noise.

    `arousal` (version 2): a track in [0, 1] spread evenly over the utterance that raises pitch, pitch accents,
    loudness and brightness; `register_spread`: the per-utterance pitch register's relative range."""
    duration = n_samples / rate
    syllables = _syllables(voice, rng, duration)
    n_frames = n_samples // HOP + 1  # STFT frames with centre=True
    frame_times = np.arange(n_frames) * HOP / rate
    sample_times = np.arange(n_samples) / rate
    level = None if arousal is None else _track_at(arousal, duration)
    if level is not None:
        syllables = _aroused_syllables(syllables, level)

    f0 = _pitch_track(voice, rng, syllables, frame_times, duration, register_spread)
    tilt = voice.tilt
    if level is not None:
        f0 = f0 * (1.0 + 0.3 * (level(frame_times) - 0.5))  # ±15 % with arousal
        tilt = voice.tilt * (0.7 + 0.6 * level(frame_times))  # (F,): aroused speech is brighter
    vowel_env, consonant_env = _envelopes(syllables, sample_times)
    source = _harmonic_source(np.interp(sample_times, frame_times, f0), rate)
    voiced = vowel_env * (source + voice.breathiness * rng.standard_normal(n_samples))
    frication = consonant_env * rng.standard_normal(n_samples) * 0.4

    frequencies = np.fft.rfftfreq(N_FFT, 1.0 / rate)
    formants = _formant_tracks(voice, rng, syllables, frame_times)  # (F, 3)
    vowel_gain = _formant_gain(frequencies, formants, np.array(voice.bandwidths))  # (n_freq, F)
    vowel_gain *= 1.0 / (1.0 + frequencies[:, None] / tilt)
    consonant_gain = _frication_gain(rng, syllables, frame_times, frequencies)  # (n_freq, F)
    channel = 10.0 ** (channel_db / 20.0)
    voiced_spectrum, frication_spectrum = stft(np.stack([voiced, frication]))  # each (n_freq, F)
    spectrum = (voiced_spectrum * vowel_gain + frication_spectrum * consonant_gain) * channel[:, None]
    return istft(spectrum, n_samples)


def stft(signals: np.ndarray) -> np.ndarray:
    """Complex STFT (..., n_freq, F) of float64 (..., n) signals: periodic Hann, hop n_fft/4, centred frames."""
    spectrum = torch.stft(
        torch.from_numpy(signals), N_FFT, HOP, window=_WINDOW, center=True, pad_mode="reflect", return_complex=True
    )
    return spectrum.numpy()


def istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of `stft` for one (n_freq, F) spectrum, `length` samples."""
    return torch.istft(torch.from_numpy(spectrum), N_FFT, HOP, window=_WINDOW, center=True, length=length).numpy()


def mouth_opening(clean: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame: RMS of the clean speech over that frame's samples."""
    rms = np.sqrt(np.mean(clean.reshape(-1, samples_per_frame) ** 2, axis=1))
    loud = np.percentile(rms, 95) + 1e-8
    return np.clip(rms / loud, 0.0, 1.0) ** 0.7


def independent_opening(voice: Voice, rng: np.random.Generator, n_frames: int, fps: int) -> np.ndarray:
    """Mouth opening per video frame from a syllable plan of its own at a speaking rate drawn from the population
    (not the voice's): lips that share no timing, rate or loudness with the audio, for the null corpus."""
    anyone = replace(voice, speaking_rate=rng.uniform(3.0, 5.5))
    vowel, consonant = _envelopes(_syllables(anyone, rng, n_frames / fps), (np.arange(n_frames) + 0.5) / fps)
    loud = np.percentile(vowel + consonant, 95) + 1e-8
    return np.clip((vowel + consonant) / loud, 0.0, 1.0) ** 0.7


def _track_at(track: np.ndarray, duration: float):
    """A per-utterance track (spread evenly over `duration`) as a function of time in seconds."""
    centres = (np.arange(len(track)) + 0.5) * duration / len(track)
    return lambda times: np.interp(times, centres, track)


def _aroused_syllables(syllables: np.ndarray, level) -> np.ndarray:
    """Syllables louder and more accented with the arousal at their vowel's centre."""
    aroused = syllables.copy()
    at_vowel = level(syllables[:, 0] + syllables[:, 1] + syllables[:, 2] / 2)
    aroused[:, 4] *= 0.55 + 0.9 * at_vowel  # loudness
    aroused[:, 5] *= 0.5 + at_vowel  # pitch accent
    return aroused


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


def _pitch_track(
    voice: Voice, rng: np.random.Generator, syllables: np.ndarray, times: np.ndarray, duration: float,
    register_spread: float = 0.15,
) -> np.ndarray:
    """F0 per STFT frame: per-utterance register, declination, accents on syllables, slow jitter."""
    register = voice.f0 * rng.uniform(1.0 - register_spread, 1.0 + register_spread)
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
