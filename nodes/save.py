"""Save Anonymized Images: the pictures into ComfyUI's output folder with nothing in the files but their
pixels, and nothing at all from an audit that failed unless that is the user's choice."""
import logging
import os

import folder_paths
from comfy_api.v0_0_2 import io

from revpers_core import file_privacy

from . import _images
from .common import AuditReport, category, check_options

log = logging.getLogger("revpers")

FORMATS = {"png": ("PNG", ".png"), "webp": ("WEBP", ".webp"), "animated webp": ("WEBP", ".webp"),
           "animated png (every frame)": ("PNG", ".png")}
ONE_FILE = ("animated webp", "animated png (every frame)")  # every image into one file


class RevPersSave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersSave",
            display_name="Save Anonymized Images (RevPers)",
            category=category(),
            description=(
                "Saves the images into ComfyUI's output folder with nothing in the files but their pixels: no "
                "prompt, no workflow (ComfyUI's own Save Image writes both, and they name the uploaded file and "
                "every setting), no EXIF, no profile. Embedding the prompt and workflow, so that the file can be "
                "dropped back onto the canvas, is a choice of 'metadata'. Connect the audit's report: images the "
                "audit failed are then saved only when 'if_audit_failed' says so (they reach this node only "
                "when the audit's on_fail hands them on, marked NOT ANONYMIZED). One file per image (png, webp), "
                "or every image as a frame of one animated WebP (a clip)."),
            inputs=[
                io.Image.Input("images", tooltip="The anonymized images: the audit's images output."),
                io.String.Input("filename_prefix", default="revpers/anonymized",
                                tooltip="File name start, under the output folder; a folder part makes a "
                                        "subfolder. A number is added per file, as Save Image does."),
                io.Combo.Input("format", options=list(FORMATS), default="png",
                               tooltip="png or webp: one file per image. animated webp: every image a frame "
                                       "of one file, at 'fps' (the frames of a clip; a frame identical to the "
                                       "one before is folded into it). animated png: every image a frame of "
                                       "one file, exactly as many pages as images (what the command line uses)."),
                io.Combo.Input("metadata", options=list(file_privacy.METADATA), default=file_privacy.NO_METADATA,
                               tooltip="none: the files hold only the pixels. prompt and workflow: ComfyUI's "
                                       "metadata, to load the workflow from the file again; it names the "
                                       "uploaded input file and every setting, so keep such files private."),
                io.Combo.Input("if_audit_failed", options=list(file_privacy.IF_AUDIT_FAILED),
                               default=file_privacy.SAVE_MARKED,
                               tooltip="With the report connected: what to do with images whose audit failed "
                                       "(the audit hands them on marked only when its on_fail asks it to). "
                                       "'save nothing' writes no file; the node says so."),
                io.Boolean.Input("lossless", default=True,
                                 tooltip="WebP only: lossless (exact pixels) or lossy at 'quality'."),
                io.Int.Input("quality", default=90, min=0, max=100,
                             tooltip="WebP only, when not lossless: quality 0-100."),
                io.Float.Input("fps", default=24.0, min=0.01, max=1000.0, step=0.01,
                               tooltip="animated webp only: frames per second."),
                AuditReport.Input("report", optional=True,
                                  tooltip="The audit's report (Audit Anonymized Photos): its verdict decides "
                                          "whether the images are saved (see if_audit_failed)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, format=None, metadata=None, if_audit_failed=None):
        return check_options(cls, format=format, metadata=metadata, if_audit_failed=if_audit_failed)

    @classmethod
    def execute(cls, images, filename_prefix, format, metadata, if_audit_failed, lossless, quality, fps,
                report=None):
        passed = None if report is None else bool(report.passed)
        pictures = [file_privacy.to_pixels(a) for a in _images.image_batch(images, "images")]
        if not file_privacy.should_save(passed, if_audit_failed):
            text = (f"nothing saved: the audit failed and if_audit_failed is '{if_audit_failed}' "
                    f"({len(pictures)} image(s) held back)")
            log.warning("revpers: save: %s", text)
            return io.NodeOutput(ui={"images": [], "revpers_save": [
                {"saved": 0, "held_back": len(pictures), "metadata": False, "audit_passed": passed}]})
        texts = None
        if metadata == file_privacy.WITH_WORKFLOW:
            texts = file_privacy.comfy_texts(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        fmt, suffix = FORMATS[format]
        height, width = pictures[0].shape[:2]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        if format == "animated webp":
            files = [(file_privacy.animation_bytes(pictures, fps, lossless, quality, texts=texts))]
        elif format == "animated png (every frame)":
            if texts:
                raise ValueError("Save Anonymized Images: the animated png holds no prompt or workflow; set "
                                 "metadata to none, or choose png or webp")
            files = [file_privacy.frames_bytes(pictures)]
        else:
            files = [file_privacy.picture_bytes(p, fmt, quality=quality, lossless=lossless, texts=texts)
                     for p in pictures]
        saved = []
        for data in files:
            file = f"{name}_{counter:05}_{suffix}"
            with open(os.path.join(folder, file), "xb") as f:  # never over another file
                f.write(data)
            saved.append({"filename": file, "subfolder": subfolder, "type": "output"})
            counter += 1
        ui = {"images": saved, "revpers_save": [{"saved": len(saved), "held_back": 0, "metadata": bool(texts),
                                                 "audit_passed": passed}]}
        if format in ONE_FILE:
            ui["animated"] = [True]
        return io.NodeOutput(ui=ui)


NODES = [RevPersSave]
