"""Face boxes found in the video (`prepare --faces detect`): a detector on a subsample of frames, the speaker's track
chosen, smoothed, interpolated to every frame, widened by a margin and squared.

The detector is OpenCV's frontal-face Haar cascade, whose trained weights ship inside the opencv-python-headless
wheel (cv2.data), so nothing is downloaded. OpenCV 5's wheel no longer ships cascades and its DNN detector (YuNet)
needs an .onnx file no registry wheel carries; facenet-pytorch ships MTCNN weights but pins torch < 2.3. Linking
detections into tracks, choosing the speaker's and smoothing it is what no library does for us, so it is written here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pipeline.media.decode import MediaError

CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
DETECTOR = "opencv-haar-frontalface-alt2"
# Detection runs on frames shrunk so their shorter side is at most this: the cascade's cost grows with the pixel
# count, and a face that fills a tenth of a 240-pixel side is still above the cascade's 20-pixel window.
WORK_SIDE = 240
_LINK_IOU = 0.3  # a detection continues a track when it overlaps the track's last box at least this much


class NoFaceError(MediaError):
    """A clip in which the detector found the face in too few of the frames it looked at."""


@dataclass(frozen=True)
class DetectionSettings:
    """How faces are found: every `every`-th frame is searched; a face must be found in `min_found` of those."""

    every: int = 5  # at 25 fps: five detections a second
    margin: float = 0.3  # each side of the square crop is the face box's side × (1 + margin)
    min_found: float = 0.5
    min_face: float = 0.08  # the smallest face searched for, as a fraction of the frame's shorter side

    def describe(self) -> str:
        """The settings as recorded in the face store's `crop` attribute."""
        return f"detect {DETECTOR} every={self.every} margin={self.margin:g} min_found={self.min_found:g}"


@functools.cache
def _cascade():
    """The cascade, loaded once per process (DataLoader workers each load their own)."""
    import cv2  # imported here: only stage 0's detection needs OpenCV

    # one thread: stage 0 runs one clip per DataLoader worker, and the workers already fill the cores
    cv2.setNumThreads(1)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {CASCADE_FILE} is missing from {cv2.data.haarcascades}: install "
                           "opencv-python-headless 4.x, whose wheel ships the cascades (5.0's does not)")
    return cascade


def detect_faces(frame: np.ndarray, min_face: float = 0.08) -> np.ndarray:
    """Every face the cascade finds in one (H, W, 3) uint8 RGB frame: (k, 4) x0 y0 x1 y1 pixels."""
    import cv2

    height, width = frame.shape[:2]
    scale = min(1.0, WORK_SIDE / min(height, width))
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    smallest = max(20, round(min_face * min(gray.shape)))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(smallest, smallest))
    if len(found) == 0:
        return np.zeros((0, 4))
    boxes = np.asarray(found, dtype=np.float64)
    boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) → (x0, y0, x1, y1)
    return boxes / scale


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (..., 4) x0 y0 x1 y1, broadcast against each other."""
    top_left = np.maximum(first[..., :2], second[..., :2])
    bottom_right = np.minimum(first[..., 2:], second[..., 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = lambda boxes: np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1)  # noqa: E731
    return intersection / (area(first) + area(second) - intersection)


@dataclass
class Track:
    """One face followed through the sampled frames: the frame index and box of each detection."""

    frames: list[int]
    boxes: list[np.ndarray]

    @property
    def strength(self) -> float:
        """How much this looks like the speaker: found often (persistent) and large (summed box side)."""
        return float(sum(np.sqrt(np.prod(box[2:] - box[:2])) for box in self.boxes))


def link_tracks(detections: dict[int, np.ndarray]) -> list[Track]:
    """Tracks of detections (frame index → (k, 4) boxes): each box joins the open track whose last box it overlaps
    most (IoU ≥ 0.3, one box per track and frame), else starts a new track. Gaps (missed frames) keep a track open."""
    tracks: list[Track] = []
    for frame in sorted(detections):
        taken: set[int] = set()
        for box in sorted(detections[frame], key=lambda b: -np.prod(b[2:] - b[:2])):  # large faces choose first
            overlaps = [(box_iou(box, track.boxes[-1]), index) for index, track in enumerate(tracks)
                        if index not in taken]
            best_iou, best = max(overlaps, default=(0.0, -1))
            if best_iou >= _LINK_IOU:
                tracks[best].frames.append(frame)
                tracks[best].boxes.append(box)
                taken.add(best)
            else:
                tracks.append(Track([frame], [box]))
                taken.add(len(tracks) - 1)
    return tracks


def track_boxes(track: Track, n_frames: int) -> np.ndarray:
    """(n_frames, 4) boxes of a track at every frame: centre and size median-filtered over 3 detections (one bad
    detection does not move the crop), then linearly interpolated between detections and held at the ends."""
    boxes = np.stack(track.boxes)
    centre_size = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                                   boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    if len(centre_size) >= 3:
        padded = np.concatenate([centre_size[:1], centre_size, centre_size[-1:]])
        centre_size = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    every_frame = np.arange(n_frames)
    cx, cy, width, height = (np.interp(every_frame, track.frames, column) for column in centre_size.T)
    return np.column_stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])


def square_crop_boxes(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Squares about each box's centre, of side max(w, h) × (1 + margin) capped at the frame's shorter side, moved
    inside the frame: the boxes `crop_boxes` cuts exactly as given, also when read back from a --boxes-dir file."""
    side = np.minimum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + margin),
                      min(width, height))
    x0 = np.clip((boxes[:, 0] + boxes[:, 2]) / 2 - side / 2, 0, width - side)
    y0 = np.clip((boxes[:, 1] + boxes[:, 3]) / 2 - side / 2, 0, height - side)
    return np.column_stack([x0, y0, x0 + side, y0 + side])


def speaker_boxes(frames: np.ndarray, settings: DetectionSettings = DetectionSettings(),  # noqa: B008 — frozen
                  source: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """(face boxes, square crop boxes), each (T, 4), of the speaker in (T, H, W, 3) frames: the strongest track of
    the faces found on every `settings.every`-th frame. Too few sampled frames with that face: NoFaceError."""
    n_frames, height, width = frames.shape[:3]
    sampled = list(range(0, n_frames, settings.every))
    detections = {index: found for index in sampled if len(found := detect_faces(frames[index], settings.min_face))}
    tracks = link_tracks(detections)
    speaker = max(tracks, key=lambda track: track.strength, default=None)
    found = len(speaker.frames) if speaker else 0
    if found < settings.min_found * len(sampled):
        raise NoFaceError(f"{source}: a face was found in {found} of {len(sampled)} sampled frames, fewer than "
                          f"min_face_found={settings.min_found:g} (--faces centre or --boxes-dir cut faces without the detector)")
    faces = track_boxes(speaker, n_frames)
    return faces, square_crop_boxes(faces, settings.margin, width, height)
