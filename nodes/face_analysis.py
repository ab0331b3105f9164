"""Face Analysis Loader: InsightFace's detector and ArcFace recognizer, shared by every face stage
(detect and align, ArcFace embedding, the anonymity check and the audit)."""
import os

from comfy_api.v0_0_2 import io

from revpers_core.faces import analysis

from .common import FaceAnalysis, category, check_options, model_folder_paths


def _packs():
    """buffalo_l first (so a graph naming it always validates and a missing pack is reported by the
    loader itself), then every other folder under <insightface>/models holding .onnx files."""
    names = [analysis.DEFAULT_PACK]
    for root in model_folder_paths("insightface"):
        base = os.path.join(root, "models")
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            if entry not in names and os.path.isdir(path):
                names.append(entry)
    return names


class RevPersFaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersFaceAnalysisLoader",
            display_name="Face Analysis Loader (RevPers)",
            category=category("Faces"),
            description=(
                "Loads InsightFace face analysis (detector + ArcFace recognition) from "
                "models/insightface/models/<pack> - buffalo_l, the pack IPAdapter-FaceID was trained with. "
                "Nothing is downloaded: a missing pack is an error saying what to put where. Loaded models are "
                "cached, so re-running a graph does not reload them."),
            inputs=[
                io.Combo.Input(
                    "model_pack", options=_packs(), default=analysis.DEFAULT_PACK,
                    tooltip="Folder under models/insightface/models holding the .onnx files "
                            "(buffalo_l: det_10g.onnx, w600k_r50.onnx, ...)."),
                io.Combo.Input(
                    "provider", options=list(analysis.PROVIDERS), default="auto",
                    tooltip="ONNX Runtime device: auto uses CUDA when onnxruntime-gpu is installed, "
                            "else the CPU."),
                io.Int.Input(
                    "det_size", default=analysis.DEFAULT_DET_SIZE, min=analysis.MIN_DET_SIZE,
                    max=analysis.MAX_DET_SIZE, step=analysis.DET_SIZE_STEP,
                    tooltip="Side of the square the detector looks at (photos are scaled to fit). "
                            "Larger finds smaller faces, slower."),
                io.Float.Input(
                    "det_thresh", default=analysis.DEFAULT_THRESHOLD, min=0.01, max=0.99, step=0.01,
                    tooltip="Detection score a face needs. Lower finds more (and more false) faces. "
                            "Used by every node that detects with this analysis unless it sets its own."),
            ],
            outputs=[
                FaceAnalysis.Output(display_name="analysis",
                                    tooltip="The loaded face analysis, with its detection threshold."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_pack=None, provider=None):
        return check_options(cls, model_pack=model_pack, provider=provider)

    @classmethod
    def execute(cls, model_pack, provider, det_size, det_thresh):
        model_dir = analysis.find_model_dir(model_folder_paths("insightface"), model_pack)
        analyser = analysis.load_analyser(model_dir, provider=provider, det_size=det_size, pack=model_pack)
        return io.NodeOutput(analysis.BoundAnalyser(analyser, float(det_thresh)))


NODES = [RevPersFaceAnalysisLoader]
