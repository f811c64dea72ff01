"""The synthetic corpus's config and generator version."""

from __future__ import annotations

from dataclasses import dataclass, field

# Bump when a change makes the same seed produce a different corpus (demo reuse checks it).
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """Size, difficulty and formats of the synthetic corpus."""

    n_speakers: int = field(default=8, metadata={"help": "Identification speakers.", "flag": "--speakers"})
    n_verification_speakers: int = field(
        default=4, metadata={"help": "Held-out speakers for the trial list.", "flag": "--verification-speakers"}
    )
    utterances_per_speaker: int = field(
        default=16, metadata={"help": "Utterances per speaker.", "flag": "--utterances"}
    )
    videos_per_speaker: int = field(
        default=4, metadata={"help": "Videos per speaker, each with at least one utterance."}
    )
    min_seconds: float = field(default=2.0, metadata={"help": "Shortest utterance."})
    max_seconds: float = field(default=7.0, metadata={"help": "Longest utterance."})
    audio_noise: float = field(default=0.5, metadata={"help": "Noise RMS relative to speech RMS (makes audio harder)."})
    video_noise: float = field(default=0.03, metadata={"help": "Per-pixel Gaussian noise std, intensities in [0, 1]."})
    frame_size: int = field(default=96, metadata={"help": "Video frame side in pixels (even, >= 16)."})
    sample_rate: int = field(default=16000, metadata={"help": "Audio sample rate in Hz (a multiple of fps)."})
    fps: int = field(default=25, metadata={"help": "Video frames per second."})
    n_trials: int = field(default=200, metadata={"help": "Verification trials.", "flag": "--trials"})
    seed: int = field(default=0, metadata={"help": "Random seed."})

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


def rounded(value: float, digits: int = 4) -> float:
    """Round a sampled parameter so speakers.json holds exactly the values used."""
    return round(float(value), digits)
