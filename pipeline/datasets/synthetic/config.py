"""The synthetic corpus's config, its corpus versions and the named presets of version 2."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pipeline.config import ConfigError

# The newest corpus version this generator writes; speakers.json records it beside the config (demo reuse checks it).
# Version 1 (independent face and voice) stays byte-reproducible: same config and seed, same mp4s and lists.
GENERATOR_VERSION = 2
CORPUS_VERSIONS = (1, 2)
TASKS = ("speaker", "emotion")

# What a setting left unset (None) takes in version 1: its value before version 2 existed.
V1_DEFAULTS = {
    "n_speakers": 8, "n_verification_speakers": 4, "utterances_per_speaker": 16, "videos_per_speaker": 4,
    "min_seconds": 2.0, "max_seconds": 7.0, "audio_noise": 0.5, "video_noise": 0.03, "n_trials": 200,
}
V1_FIELDS = ("n_speakers", "n_verification_speakers", "utterances_per_speaker", "videos_per_speaker", "min_seconds",
             "max_seconds", "audio_noise", "video_noise", "frame_size", "sample_rate", "fps", "n_trials", "seed")
# Settings added to version 2 after it first wrote corpora, with the value that renders what it rendered before them:
# a speakers.json without the key records that value (synthesize_or_reuse).
ADDED_SETTINGS = {"expression": 0.0, "vocal_expression": 0.0}
_CORRELATED = {
    **V1_DEFAULTS, "task": "speaker", "n_speakers": 16, "utterances_per_speaker": 40, "videos_per_speaker": 8,
    "min_seconds": 3.0, "max_seconds": 6.0, "shared_strength": 0.9, "video_noise": 0.04, "occlusion": 0.3,
    "blur": 1.0, "pose_jitter": 1.5, "lighting": 0.15, "audio_noise": 0.5, "audio_nuisance": 1.0,
    "test_share": 0.2, "val_share": 0.1, **ADDED_SETTINGS,
}
_EMOTION = {**_CORRELATED, "task": "emotion", "n_speakers": 8, "n_verification_speakers": 0, "n_trials": 0,
            "utterances_per_speaker": 48, "videos_per_speaker": 4}
# Version 2 corpora by name: every setting a preset names applies unless given explicitly.
PRESETS = {
    "correlated": _CORRELATED,  # face and voice share size/shape factors and the arousal track
    "null": {**_CORRELATED, "shared_strength": 0.0},  # same private features and scenes; nothing shared but the label
    "weak-teacher": {**_CORRELATED, "occlusion": 0.8, "blur": 3.0, "pose_jitter": 3.0, "lighting": 0.4,
                     "video_noise": 0.12},  # video too degraded for a good teacher
    "emotion": _EMOTION,  # arousal classes, RAVDESS layout, leave-one-speaker-out
    "emotion-null": {**_EMOTION, "shared_strength": 0.0},
}
DEFAULT_PRESET = "correlated"  # what version 2 takes without --preset


@dataclass(frozen=True)
class SynthConfig:
    """Size, difficulty and formats of the synthetic corpus; None takes the preset's (v2) or version 1's value."""

    corpus_version: int | None = field(default=None, metadata={
        "help": "1: face and voice drawn independently (the original corpus, byte-reproducible); 2: shared latent "
                "factors and arousal (default: 2 with --preset, else 1).", "min": 1, "max": 2})
    preset: str | None = field(default=None, metadata={
        "help": "Version 2 settings by name; options given explicitly win.", "choices": PRESETS})
    task: str | None = field(default=None, metadata={
        "help": "Version 2: speaker (VoxCeleb layout, split by video) or emotion (arousal classes in the RAVDESS "
                "layout, for leave-one-speaker-out folds).", "choices": TASKS})
    # None below: the preset's value (version 2) or version 1's (in brackets)
    n_speakers: int | None = field(default=None, metadata={
        "help": "Identification speakers; the emotion task's actors, at most 24 (version 1: 8).", "flag": "--speakers"})
    n_verification_speakers: int | None = field(default=None, metadata={
        "help": "Held-out speakers for the trial list (version 1: 4).", "flag": "--verification-speakers"})
    utterances_per_speaker: int | None = field(default=None, metadata={
        "help": "Utterances per speaker (version 1: 16).", "flag": "--utterances"})
    videos_per_speaker: int | None = field(default=None, metadata={
        "help": "Videos (recording scenes) per speaker, each with at least one utterance (version 1: 4)."})
    min_seconds: float | None = field(default=None, metadata={"help": "Shortest utterance (version 1: 2)."})
    max_seconds: float | None = field(default=None, metadata={"help": "Longest utterance (version 1: 7)."})
    audio_noise: float | None = field(default=None, metadata={
        "help": "Noise RMS relative to speech RMS (makes audio harder) (version 1: 0.5).", "min": 0.0})
    video_noise: float | None = field(default=None, metadata={
        "help": "Per-pixel Gaussian noise std, intensities in [0, 1] (version 1: 0.03).", "min": 0.0})
    shared_strength: float | None = field(default=None, metadata={
        "help": "Version 2: correlation between each shared face factor and its voice factor across speakers "
                "(size ↔ vocal-tract length, shape ↔ pitch register) and between the face's and the voice's "
                "arousal; 0 is the null corpus.", "min": 0.0, "max": 1.0})
    occlusion: float | None = field(default=None, metadata={
        "help": "Version 2: largest share of the face an occluder covers in an utterance (drawn per utterance).",
        "min": 0.0, "max": 1.0})
    blur: float | None = field(default=None, metadata={
        "help": "Version 2: largest Gaussian blur std, in pixels of a 96-pixel frame (drawn per utterance).",
        "min": 0.0})
    pose_jitter: float | None = field(default=None, metadata={
        "help": "Version 2: head placement, scale, roll and shake relative to version 1's (1 = the same).",
        "min": 0.0})
    lighting: float | None = field(default=None, metadata={
        "help": "Version 2: std of the per-utterance log gain of each colour channel (white balance, exposure).",
        "min": 0.0})
    audio_nuisance: float | None = field(default=None, metadata={
        "help": "Version 2: per-video and per-utterance channel colouring and pitch-register shifts relative to "
                "the preset's (1 = 5 dB + 3 dB channel, ±12 % register).", "min": 0.0, "max": 4.0})
    expression: float | None = field(default=None, metadata={
        "help": "Version 2, emotion task: strength of the emotion's facial expression (mouth corners curled up for "
                "calm and happy, down for sad and angry, longer with arousal); 0 shows the class only through the "
                "arousal's brows, eyes and mouth opening, as the emotion preset.", "min": 0.0, "max": 4.0})
    vocal_expression: float | None = field(default=None, metadata={
        "help": "Version 2, emotion task: strength of the emotion's vocal expression (formants 5 % per unit up for "
                "calm and happy, down for sad and angry, as a smile shortens the tract; syllables quicker with "
                "arousal); 0 leaves the class to the arousal's pitch, loudness and brightness, as the emotion preset.",
        "min": 0.0, "max": 4.0})
    test_share: float | None = field(default=None, metadata={
        "help": "Version 2, speaker task: share of each speaker's videos in the test split (at least one video).",
        "min": 0.0, "max": 1.0})
    val_share: float | None = field(default=None, metadata={
        "help": "Version 2, speaker task: share of each speaker's videos in the validation split (at least one).",
        "min": 0.0, "max": 1.0})
    frame_size: int = field(default=96, metadata={"help": "Video frame side in pixels (even, >= 16)."})
    sample_rate: int = field(default=16000, metadata={"help": "Audio sample rate in Hz (a multiple of fps)."})
    fps: int = field(default=25, metadata={"help": "Video frames per second."})
    n_trials: int | None = field(default=None, metadata={
        "help": "Verification trials (version 1: 200).", "flag": "--trials"})
    seed: int = field(default=0, metadata={"help": "Random seed."})

    def __post_init__(self) -> None:
        for name, value in self._resolved().items():
            object.__setattr__(self, name, value)  # frozen: the resolved values are the config's own
        problems = self._problems()
        if problems:
            raise ConfigError("SynthConfig: " + "; ".join(problems))  # a ValueError, printed as one line by the CLI

    def _resolved(self) -> dict:
        """Every unset (None) setting with its preset's value (version 2) or version 1's."""
        if self.corpus_version not in (None, *CORPUS_VERSIONS):
            raise ConfigError(f"SynthConfig: corpus_version must be one of {CORPUS_VERSIONS}, "
                              f"got {self.corpus_version}")
        version = self.corpus_version or (2 if self.preset is not None else 1)
        if version == 1:
            return {"corpus_version": 1, **{name: value for name, value in V1_DEFAULTS.items()
                                            if getattr(self, name) is None}}
        preset = self.preset or DEFAULT_PRESET
        if preset not in PRESETS:
            raise ConfigError(f"SynthConfig: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return {"corpus_version": 2, "preset": preset, **{name: value for name, value in PRESETS[preset].items()
                                                           if getattr(self, name) is None}}

    def _problems(self) -> list[str]:
        """Every constraint the values break, so one error lists them all."""
        problems = []
        if self.corpus_version == 1:
            extra = [item.name for item in fields(self) if item.name not in (*V1_FIELDS, "corpus_version")
                     and getattr(self, item.name) is not None]
            if extra:
                problems.append(f"{', '.join(extra)}: version 2 settings; pass corpus_version 2 (or a preset)")
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
        if self.corpus_version == 2:
            problems += self._v2_problems()
        return problems

    def _v2_problems(self) -> list[str]:
        """What version 2 adds: task-specific sizes and knob ranges."""
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "speaker" and self.videos_per_speaker < 3:
            problems.append("the speaker task splits by video: videos_per_speaker must be >= 3 (train, val, test)")
        if self.task == "speaker" and self.videos_per_speaker >= 3 and min(
                self.split_counts(self.videos_per_speaker)) < 1:
            problems.append(f"test_share {self.test_share} and val_share {self.val_share} leave no training video "
                            f"of {self.videos_per_speaker}")
        if self.task == "emotion":
            if self.n_speakers > 24 or self.n_verification_speakers or self.n_trials:
                problems.append("the emotion task (RAVDESS layout) takes 1-24 speakers, no verification speakers "
                                "and no trials")
            if self.utterances_per_speaker > 64:
                problems.append("the emotion task's RAVDESS names hold at most 64 utterances per speaker")
        if not 0 <= self.shared_strength <= 1 or not 0 <= self.occlusion <= 1:
            problems.append("shared_strength and occlusion must lie in [0, 1]")
        if (self.expression or self.vocal_expression) and self.task != "emotion":
            problems.append("expression and vocal_expression show an emotion class: they need the emotion task")
        if not (0 <= self.expression <= 4 and 0 <= self.vocal_expression <= 4):
            problems.append("expression and vocal_expression must lie in [0, 4]")
        if min(self.blur, self.pose_jitter, self.lighting, self.audio_nuisance) < 0 or self.audio_nuisance > 4:
            problems.append("blur, pose_jitter, lighting and audio_nuisance must be >= 0, audio_nuisance <= 4")
        return problems

    def split_counts(self, n_videos: int) -> tuple[int, int, int]:
        """(train, val, test) videos of a speaker with `n_videos`: the shares rounded, at least one val and test."""
        n_test = max(1, round(self.test_share * n_videos))
        n_val = max(1, round(self.val_share * n_videos))
        return n_videos - n_test - n_val, n_val, n_test

    def _max_trials(self) -> int:
        """Trials that fit without repeating a pair, half positive, half negative."""
        speakers, utterances = self.n_verification_speakers, self.utterances_per_speaker
        positives = speakers * utterances * (utterances - 1) // 2
        negatives = speakers * (speakers - 1) // 2 * utterances**2
        return 2 * min(positives, negatives)


def rounded(value: float, digits: int = 4) -> float:
    """Round a sampled parameter so speakers.json holds exactly the values used."""
    return round(float(value), digits)
