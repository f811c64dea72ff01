"""Degraded audio for stage 3: the student hears a noisier, band-limited or codec-coded copy of what the teacher heard.

A degradation is a chain of steps written `noise=SNR_DB,bandpass=LOW-HIGH,mulaw=BITS` (also `lowpass=HZ`), applied
in that order to the 16 kHz waveform stage 0 stored (`prepare --waveforms`):
- `noise=SNR`: white Gaussian noise at SNR dB below the utterance's mean power;
- `lowpass=HZ`, `bandpass=LOW-HIGH`: an ideal (FFT brick-wall, zero-phase) filter, e.g. telephone 300-3400;
- `mulaw=BITS`: µ-law companding to 2^BITS levels and back (G.711 is 8 bits).

Each utterance's degradation is drawn from its own generator, seeded by the degradation seed and the utterance key:
every epoch, every training seed and every process sees the same degraded copy, so students that differ only in
their training seed are paired on identical input. The student's spectrogram is then computed from that copy exactly
as stage 0 computes one (LogSpectrogram over the whole utterance, rounded to float16).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from cache.store import open_store
from pipeline.config import ConfigError
from pipeline.features import LogSpectrogram, SpectrogramParams, from_pcm16

STEPS = ("noise", "lowpass", "bandpass", "mulaw")
# degraded spectrograms kept per reader (per DataLoader worker), least recently used dropped first: 256 MB holds
# ~1700 utterances of 3 s, so a small corpus's training and validation splits are degraded once, not every epoch
CACHE_BYTES = 256 << 20


@dataclass(frozen=True)
class Step:
    name: str
    values: tuple[float, ...]


def parse(text: str, sample_rate: int = 16000) -> tuple[Step, ...]:
    """`noise=10,bandpass=300-3400,mulaw=8` → its steps; anything malformed is a ConfigError that names it."""
    steps = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or name not in STEPS:
            raise ConfigError(f"--degrade: {part!r} is not one of {', '.join(f'{s}=...' for s in STEPS)} "
                              f"(e.g. noise=10,bandpass=300-3400,mulaw=8)")
        try:
            values = tuple(float(v) for v in value.split("-")) if name == "bandpass" else (float(value),)
        except ValueError:
            raise ConfigError(f"--degrade: {part!r}: {value!r} is not a number") from None
        nyquist = sample_rate / 2
        if name == "bandpass" and not (len(values) == 2 and 0 <= values[0] < values[1] <= nyquist):
            raise ConfigError(f"--degrade: {part!r}: bandpass needs LOW-HIGH with 0 <= LOW < HIGH <= {nyquist:g} Hz")
        if name == "lowpass" and not 0 < values[0] <= nyquist:
            raise ConfigError(f"--degrade: {part!r}: the cut-off must lie in (0, {nyquist:g}] Hz")
        if name == "mulaw" and not (values[0] == int(values[0]) and 2 <= values[0] <= 16):
            raise ConfigError(f"--degrade: {part!r}: mulaw takes whole bits in [2, 16]")
        steps.append(Step(name, values))
    return tuple(steps)


def utterance_generator(seed: int, key: str) -> np.random.Generator:
    """The generator of one utterance's degradation: a pure function of the seed and the key."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _band(audio: np.ndarray, low: float, high: float, sample_rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(audio)
    frequencies = np.fft.rfftfreq(len(audio), 1 / sample_rate)
    spectrum[(frequencies < low) | (frequencies > high)] = 0
    return np.fft.irfft(spectrum, n=len(audio))


def apply(steps: tuple[Step, ...], audio: np.ndarray, generator: np.random.Generator,
          sample_rate: int = 16000) -> np.ndarray:
    """The degraded copy of (n,) float samples in [-1, 1], float32."""
    audio = audio.astype(np.float64)
    for step in steps:
        if step.name == "noise":
            power = float(np.mean(audio**2)) or 1e-10
            audio = audio + generator.standard_normal(len(audio)) * np.sqrt(power / 10 ** (step.values[0] / 10))
        elif step.name == "lowpass":
            audio = _band(audio, 0.0, step.values[0], sample_rate)
        elif step.name == "bandpass":
            audio = _band(audio, *step.values, sample_rate)
        elif step.name == "mulaw":
            channels = 2 ** int(step.values[0])
            clipped = torch.from_numpy(np.clip(audio, -1.0, 1.0))
            coded = torchaudio.functional.mu_law_encoding(clipped, channels)
            audio = torchaudio.functional.mu_law_decoding(coded, channels).numpy()
    return audio.astype(np.float32)


class DegradedSpectrograms:
    """Reads like stage 0's spectrogram store (`read(key, "spectrogram", start, stop)`, `attrs`, `close`), but each
    utterance's spectrogram is computed from its degraded waveform (`prepare --waveforms`). Opened lazily, so a
    DataLoader worker opens its own copy of the waveform store."""

    def __init__(self, waveforms: Path, degradation: str, seed: int, params: SpectrogramParams):
        self.path, self.degradation, self.seed, self.params = Path(waveforms), degradation, seed, params
        self.steps = parse(degradation, params.sample_rate)
        self.store, self.spectrogram, self.recent, self.cached_bytes = None, None, OrderedDict(), 0

    def _open(self):
        if self.store is None:
            self.store = open_store(self.path)
            rate = self.store.attrs.get("sample_rate")
            if rate != self.params.sample_rate:
                raise ConfigError(f"{self.path}: holds {rate} Hz audio, the spectrograms are {self.params.sample_rate}"
                                  " Hz; re-run `avl stage prepare --waveforms`")
            self.spectrogram = LogSpectrogram(self.params)
        return self.store

    @property
    def attrs(self) -> dict:
        return {**self._open().attrs, "spectrogram": self.params.to_dict(), "degradation": self.degradation,
                "degradation_seed": self.seed}

    def waveform(self, key: str) -> np.ndarray:
        """The degraded waveform of `key`, (n,) float32."""
        clean = from_pcm16(self._open().read(key, "waveform"))
        return apply(self.steps, clean, utterance_generator(self.seed, key), self.params.sample_rate)

    def _whole(self, key: str) -> np.ndarray:
        if key in self.recent:
            self.recent.move_to_end(key)
            return self.recent[key]
        with torch.no_grad():
            rows = self.spectrogram_of(self.waveform(key))
        self.recent[key] = rows
        self.cached_bytes += rows.nbytes
        while self.cached_bytes > CACHE_BYTES and len(self.recent) > 1:
            self.cached_bytes -= self.recent.popitem(last=False)[1].nbytes
        return rows

    def spectrogram_of(self, audio: np.ndarray) -> np.ndarray:
        """Stage 0's spectrogram of (n,) samples, float16 as stage 0 stores it."""
        self._open()
        return self.spectrogram(torch.from_numpy(audio)).numpy().astype(np.float16)

    def read(self, key: str, field: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if field != "spectrogram":
            raise KeyError(f"degraded spectrograms hold the field 'spectrogram', not {field!r}")
        return self._whole(key)[start:stop]

    def length(self, key: str, field: str = "spectrogram") -> int:
        return len(self._whole(key))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store, self.recent, self.cached_bytes = None, OrderedDict(), 0

    def __getstate__(self) -> dict:  # DataLoader workers get an unopened copy
        return {**self.__dict__, "store": None, "spectrogram": None, "recent": OrderedDict(), "cached_bytes": 0}
