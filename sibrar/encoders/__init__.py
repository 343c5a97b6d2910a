"""Raw content (texts, images, audio clips) -> feature files that the data layer loads as vector modalities.

sentence-transformers and open_clip are imported only when a model is loaded (they are slow to import).
"""

from sibrar.encoders.audio import AudioEncoderConfig, audio_file_features, clip_features, encode_audio, feature_names
from sibrar.encoders.common import EncodeReport
from sibrar.encoders.image import ImageEncoderConfig, encode_images, load_image_model
from sibrar.encoders.text import (
    DEFAULT_TEXT_MODEL, TextEncoderConfig, TextTemplate, bundled_model_path, embed_texts, encode_text, load_text_model,
    render_texts,
)

__all__ = [
    "DEFAULT_TEXT_MODEL", "AudioEncoderConfig", "EncodeReport", "ImageEncoderConfig", "TextEncoderConfig",
    "TextTemplate", "audio_file_features", "bundled_model_path", "clip_features", "embed_texts", "encode_audio",
    "encode_images", "encode_text", "feature_names", "load_image_model", "load_text_model", "render_texts",
]
