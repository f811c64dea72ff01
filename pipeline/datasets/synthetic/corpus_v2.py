"""Version 2 of the synthetic corpus: people from partly shared latent factors, an arousal track in both streams,
video nuisance that sets the teacher's difficulty, and splits by video.

Speaker task: the VoxCeleb layout (mp4/idNNNNN/VIDEO/NNNNN.mp4, iden_split.txt by whole videos, veri_test.txt over
held-out speakers). Emotion task: the RAVDESS layout (Actor_NN/01-CC-EE-II-SS-RR-NN.mp4, classes from the arousal
level and contour, see latent.EMOTION_CLASSES), so `avl protocol --dataset ravdess` runs leave-one-speaker-out folds.
Both write utterances.tsv (every utterance's split, class and arousal), speakers.json (every person's latent,
face and voice) and boxes/<key>.npy (the face's true box in every frame, widened by 30 %: `avl stage prepare --faces
boxes --boxes-dir ROOT/boxes` crops the teacher's input around the face instead of the frame's centre). Each
utterance has its own seeds: any one can be regenerated alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets.synthetic.config import GENERATOR_VERSION, SynthConfig, rounded
from pipeline.datasets.synthetic.degrade import spoiler
from pipeline.datasets.synthetic.face import Face, render_talking_face
from pipeline.datasets.synthetic.latent import (
    EMOTION_CLASSES,
    SHARED_FACTORS,
    Latent,
    arousal_track,
    latent_face,
    latent_voice,
    mixed_track,
    sample_latent,
    valence,
)
from pipeline.datasets.synthetic.voice import Voice, channel_response, independent_opening, mouth_opening, speech
from pipeline.datasets.synthetic.writing import trial_lines, write_boxes, write_mp4, write_text

_VIDEO_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_FIRST_SPEAKER_NUMBER = 10001
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_EMOTIONS = list(EMOTION_CLASSES)
_CHANNEL_DB = (5.0, 3.0)  # per-video and per-utterance colouring spread at audio_nuisance 1
_REGISTER_SPREAD = 0.12  # per-utterance pitch register range at audio_nuisance 1
BOXES = "boxes"  # ROOT/boxes/<key>.npy: the true face boxes, for `avl stage prepare --faces boxes --boxes-dir`
_BOX_MARGIN = 0.3  # as the face detector's default margin (pipeline/media/detect.py)
TRUTH_COLUMNS = ("key", "speaker", "video", "split", "emotion", "arousal_mean", "arousal_slope", "face_arousal_mean")


@dataclass(frozen=True)
class Person:
    """One synthetic speaker (an actor in the emotion task)."""

    id: str  # "id10001" or "Actor_01"
    role: str  # "identification" | "verification"
    latent: Latent
    face: Face
    voice: Voice
    videos: list[str]  # video (recording session) ids


@dataclass(frozen=True)
class Take:
    """One utterance: where it goes and what makes it reproducible."""

    key: str  # what the dataset adapter calls it: idNNNNN/VIDEO/NNNNN, or Actor_NN/ plus the RAVDESS code
    speaker: int
    video: int
    index: int  # 0-based within its speaker
    n_frames: int
    split: str  # "train" | "val" | "test" (speaker task), "none" (verification speakers, emotion task)
    emotion: str | None  # an EMOTION_CLASSES name (emotion task)


def synthesize(out: Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write a version-2 corpus under `out`; return `out`."""
    total = cfg.n_speakers + cfg.n_verification_speakers
    people = [sample_person(cfg, index) for index in range(total)]
    plan = [take for index, person in enumerate(people) for take in plan_person(cfg, person, index)]
    rows = []
    for take in tqdm(plan, desc="synthesize", unit="utt", disable=not progress):
        audio, frames, boxes, truth = render_take(cfg, people[take.speaker], take)
        path = out / _file_name(take.key, cfg.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, frames, audio, cfg.fps, cfg.sample_rate)
        write_boxes(out / BOXES / f"{take.key}.npy", widened(boxes, _BOX_MARGIN))
        rows.append("\t".join(str(value) for value in (take.key, people[take.speaker].id, take.video, take.split,
                                                       take.emotion or "", *truth)))
    if cfg.task == "speaker":
        iden = [f"{_SPLIT_CODES[take.split]} {take.key}.wav" for take in plan if take.speaker < cfg.n_speakers]
        write_text(out / "iden_split.txt", iden)
        veri = [take for take in plan if take.speaker >= cfg.n_speakers]
        write_text(out / "veri_test.txt", trial_lines(np.random.default_rng([cfg.seed, 3]), veri, cfg.n_trials))
    write_text(out / "utterances.tsv", ["\t".join(TRUTH_COLUMNS), *rows])
    write_text(out / "speakers.json", [_speakers_json(cfg, people)])
    return out


def sample_person(cfg: SynthConfig, index: int) -> Person:
    """Person `index`, from its own seed: adding people never changes the others, and corpora that differ only in
    shared_strength or the nuisance knobs hold the same private features."""
    rng = np.random.default_rng([cfg.seed, 0, index])
    latent = sample_latent(rng, cfg.shared_strength)
    face, voice = latent_face(rng, latent), latent_voice(rng, latent)
    videos = ["".join(rng.choice(_VIDEO_ID_ALPHABET, 11)) for _ in range(cfg.videos_per_speaker)]
    role = "identification" if index < cfg.n_speakers else "verification"
    name = f"Actor_{index + 1:02d}" if cfg.task == "emotion" else f"id{_FIRST_SPEAKER_NUMBER + index}"
    return Person(name, role, latent, face, voice, videos)


def plan_person(cfg: SynthConfig, person: Person, index: int) -> list[Take]:
    """A person's utterances: consecutive blocks per video (so no class or split follows the scene), lengths, and
    the split of each whole video (speaker task) or the emotion class of each utterance (emotion task)."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    n, n_videos = cfg.utterances_per_speaker, cfg.videos_per_speaker
    videos = np.arange(n) * n_videos // n  # (n,) every video gets utterances, in blocks
    seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds, n)
    splits = _video_splits(rng, cfg, n_videos) if person.role == "identification" and cfg.task == "speaker" else None
    takes, numbers = [], {}
    for position, (video, length) in enumerate(zip(videos.tolist(), seconds)):
        n_frames = max(1, round(length * cfg.fps))
        if cfg.task == "emotion":
            emotion = _EMOTIONS[position % len(_EMOTIONS)]
            key = f"{person.id}/{_ravdess_name(emotion, position // len(_EMOTIONS), index + 1)}"
            takes.append(Take(key, index, video, position, n_frames, "none", emotion))
            continue
        numbers[video] = numbers.get(video, 0) + 1
        key = f"{person.id}/{person.videos[video]}/{numbers[video]:05d}"
        takes.append(Take(key, index, video, position, n_frames, splits[video] if splits else "none", None))
    return takes


def _video_splits(rng: np.random.Generator, cfg: SynthConfig, n_videos: int) -> list[str]:
    """Each video's split: the config's shares of the videos (70/10/20 % by default), at least one val and one
    test video."""
    n_train, n_val, n_test = cfg.split_counts(n_videos)
    splits = ["test"] * n_test + ["val"] * n_val + ["train"] * n_train
    return [splits[i] for i in rng.permutation(n_videos)]


def _ravdess_name(emotion: str, slot: int, actor: int) -> str:
    """The RAVDESS utterance code (its file name without the modality field) of the `slot`-th utterance (0-15) of
    an emotion: vocal channel, intensity, statement and repetition count the slots (they carry no meaning here)."""
    channel, intensity, statement, repetition = slot // 8, slot // 4 % 2, slot // 2 % 2, slot % 2
    code = EMOTION_CLASSES[emotion][2]
    return f"{channel + 1:02d}-{code}-{intensity + 1:02d}-{statement + 1:02d}-{repetition + 1:02d}-{actor:02d}"


def _file_name(key: str, task: str) -> str:
    """Where an utterance's mp4 goes: mp4/KEY.mp4 (VoxCeleb), or ACTOR/01-CODE.mp4 (RAVDESS full audio-visual)."""
    if task == "speaker":
        return f"mp4/{key}.mp4"
    actor, code = key.split("/")
    return f"{actor}/01-{code}.mp4"


def render_take(cfg: SynthConfig, person: Person, take: Take) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Audio (n,) float32, frames (T, S, S, 3) uint8, the face's boxes (T, 4) and the utterance's arousal truth
    (mean, slope, the face's mean)."""
    scene_rng = np.random.default_rng([cfg.seed, 4, take.speaker, take.video])
    rng = np.random.default_rng([cfg.seed, 5, take.speaker, take.index])
    mood_rng = np.random.default_rng([cfg.seed, 6, take.speaker, take.index])
    spoil_rng = np.random.default_rng([cfg.seed, 7, take.speaker, take.index])
    samples_per_frame = cfg.sample_rate // cfg.fps
    n_samples = take.n_frames * samples_per_frame
    arousal = arousal_track(mood_rng, take.n_frames, cfg.fps, take.emotion)
    # the face shows the voice's arousal only as far as shared_strength says; the rest is an unrelated mood
    seen = mixed_track(arousal, arousal_track(mood_rng, take.n_frames, cfg.fps), cfg.shared_strength)
    # microphone and room: shared by a video's utterances, plus a smaller per-utterance change
    nuisance = cfg.audio_nuisance
    channel_db = (channel_response(scene_rng, _CHANNEL_DB[0] * nuisance)
                  + channel_response(rng, _CHANNEL_DB[1] * nuisance))
    clean = speech(_expressed_voice(cfg, take, person.voice, arousal), rng, n_samples, cfg.sample_rate, channel_db,
                   arousal, _REGISTER_SPREAD * nuisance)
    if cfg.shared_strength > 0:
        opening = mouth_opening(clean, samples_per_frame)  # lips follow the utterance's own speech
    else:  # the null corpus: not even the lips' timing is shared
        opening = independent_opening(person.voice, mood_rng, take.n_frames, cfg.fps)
    speech_rms = float(np.sqrt(np.mean(clean**2))) + 1e-8
    noisy = clean + rng.normal(0.0, cfg.audio_noise * speech_rms, n_samples)
    audio = (noisy * (rng.uniform(0.35, 0.8) / (np.abs(noisy).max() + 1e-8))).astype(np.float32)
    spoil = spoiler(spoil_rng, cfg.occlusion, cfg.blur, cfg.lighting, cfg.frame_size)
    frames, boxes = render_talking_face(person.face, opening, scene_rng, rng, cfg.frame_size, cfg.fps,
                                        cfg.video_noise, arousal=seen, pose_jitter=cfg.pose_jitter, degrade=spoil,
                                        expression=_expression(cfg, take, seen))
    return audio, frames, boxes, (rounded(arousal.mean()), rounded(_slope(arousal)), rounded(seen.mean()))


def _expressed_voice(cfg: SynthConfig, take: Take, voice: Voice, arousal: np.ndarray) -> Voice:
    """The emotion task's vocal expression (`cfg.vocal_expression` > 0): a smile shortens the tract, so every
    formant rises for a rising class (calm, happy) and falls for a falling one (sad, angry), 5 % per unit of
    strength; and the syllables quicken with the utterance's arousal. The voice unchanged otherwise."""
    if not cfg.vocal_expression or take.emotion is None:
        return voice
    strength = cfg.vocal_expression
    formants = tuple(rounded(f * (1.0 + 0.05 * strength * valence(take.emotion)), 1) for f in voice.formants)
    rate = voice.speaking_rate * (1.0 + 0.25 * strength * (float(arousal.mean()) - 0.5))
    return replace(voice, formants=formants, speaking_rate=rate)


def _expression(cfg: SynthConfig, take: Take, seen: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """The emotion task's facial expression (`cfg.expression` > 0) as (strength, curl, level): mouth corners curled
    up (curl 1) for a rising class (calm, happy), down (-1) for a falling one (sad, angry), mixed with an unrelated
    curl as `shared_strength` says, as long as the arousal the face shows. None (nothing drawn, nothing drawn at
    random) otherwise, so corpora without it stay byte for byte what they were."""
    if not cfg.expression or take.emotion is None:
        return None
    rng = np.random.default_rng([cfg.seed, 8, take.speaker, take.index])  # a stream of its own
    curl = (np.sqrt(cfg.shared_strength) * valence(take.emotion)
            + np.sqrt(1.0 - cfg.shared_strength) * rng.uniform(-1.0, 1.0))
    return cfg.expression, float(np.clip(curl, -1.0, 1.0)), seen


def widened(boxes: np.ndarray, margin: float) -> np.ndarray:
    """Face boxes (T, 4) grown by `margin` of their size about their centres (hair and chin inside, as a detector's
    crop with that margin)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (1 + margin) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _slope(track: np.ndarray) -> float:
    """Least-squares change of a track over the whole utterance (its slope per utterance length)."""
    position = (np.arange(len(track)) + 0.5) / len(track) - 0.5
    return float(np.polyfit(position, track, 1)[0]) if len(track) > 1 else 0.0


def _speakers_json(cfg: SynthConfig, people: list[Person]) -> str:
    """Ground truth: the generator, the config, the shared factors and every person's latent, face and voice."""
    truth = {person.id: {key: value for key, value in asdict(person).items() if key != "id"} for person in people}
    document = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "shared_factors": SHARED_FACTORS,
                "emotion_classes": {name: list(value) for name, value in EMOTION_CLASSES.items()}, "speakers": truth}
    return json.dumps(document, indent=2)
