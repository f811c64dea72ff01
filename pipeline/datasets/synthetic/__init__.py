"""A synthetic talking-face speaker corpus written as real H.264/AAC mp4 files in the VoxCeleb1 layout.

Speakers differ in face (shape, colours, hair, eyes, brows, nose, beard, glasses; `face`) and in voice
(pitch, formants, speaking rate, breathiness; `voice`). Voices are drawn to overlap more than faces, so a
video teacher identifies speakers better than an audio student: the setting in which video is worth
distilling. The mouth opens with the amplitude of the utterance's own clean speech, which links the two
streams. `corpus` plans the utterances and writes the files; `config` holds `SynthConfig`.
"""

from pipeline.datasets.synthetic.config import GENERATOR_VERSION, SynthConfig
from pipeline.datasets.synthetic.corpus import synthesize
from pipeline.datasets.synthetic.face import Face
from pipeline.datasets.synthetic.voice import Voice

__all__ = ["GENERATOR_VERSION", "Face", "SynthConfig", "Voice", "synthesize"]
