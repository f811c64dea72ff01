"""Media for stage 0 and inference: PyAV decoding and stream alignment (`decode`), face crops (`faces`)."""

from pipeline.media.decode import MediaError, MediaInfo, decode_audio, decode_video, load_audio_visual, probe
from pipeline.media.faces import centre_crop_resize, crop_boxes, face_crops, read_boxes

__all__ = [
    "MediaError",
    "MediaInfo",
    "centre_crop_resize",
    "crop_boxes",
    "decode_audio",
    "decode_video",
    "face_crops",
    "load_audio_visual",
    "probe",
    "read_boxes",
]
