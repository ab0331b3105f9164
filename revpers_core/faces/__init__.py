"""The face side of Reverse Personalization: find the faces of a photo, align them to square crops,
take their ArcFace identity, paste edited crops back seamlessly, and measure how much identity is
left. Free of ComfyUI; images are numpy arrays.

  analysis  InsightFace loader (FaceAnalyser: detect / embed / get), face selection and order
  align     the canonical template, similarity transforms, crops, face masks
  paste     feathered inverse warping, several faces per photo, pass-through marking
  metrics   cosine similarity and the anonymity report
  pipeline  the stages over image batches, failing closed when a face is missing
  records   the plain records passed between them
"""
from .records import Detection, FaceRecord, FaceSet  # noqa: F401
