"""Paste Back Faces: the edited face crops back into their photos, through the inverse of the alignment."""
import logging

from comfy_api.v0_0_2 import io

from revpers_core.faces import paste, pipeline

from . import _images
from .common import Faces, Progress, category

log = logging.getLogger("revpers")


class RevPersPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersPasteBack",
            display_name="Paste Back Faces (RevPers)",
            category=category("Faces"),
            description=(
                "Puts edited face crops back into their photos through the inverse of the alignment, blended with "
                "each crop's face mask feathered inwards, so there is no seam; several faces per photo, overlaps "
                "shared by weight. Pixels outside the masks are left exactly as they were. Faces too small for the "
                "model are covered with a flat fill; faces left on request are outlined and the photo carries a red "
                "banner; photos that Detect and Align passed through without a face get a red NOT ANONYMIZED frame "
                "and banner."),
            inputs=[
                io.Image.Input("images", tooltip="The photos that went into Detect and Align Faces."),
                io.Image.Input("crops", tooltip="The edited (anonymized) crops, in face order; any square size."),
                Faces.Input("faces", tooltip="From Detect and Align Faces."),
                io.Float.Input("feather", default=paste.DEFAULT_FEATHER, min=0.0, max=paste.MAX_FEATHER, step=0.005,
                               tooltip="Width of the soft edge inside the mask, as a fraction of the crop side "
                                       "(0.05 = 51 px on a 1024 crop). 0 = hard edge."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Replace the standard face masks (crop space, one per face or one for all). "
                                      "Default: the masks Detect and Align made."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The photos with the crops pasted back."),
                io.Mask.Output(display_name="coverage",
                               tooltip="How much of each pixel came from the crops (0 = untouched)."),
                io.String.Output(display_name="warning",
                                 tooltip="Empty, or which photos were passed through unanonymized and why."),
            ],
        )

    @classmethod
    def execute(cls, images, crops, faces, feather, masks=None):
        batch = _images.image_batch(images, "images")
        crop_batch = _images.image_array(crops, "crops")
        outs, coverage, warning = pipeline.paste_back(
            batch, crop_batch, faces, masks=_images.mask_batch(masks, "masks"),
            feather=float(feather), on_step=Progress(len(batch)))
        if warning:
            log.warning("revpers: %s", warning.replace("\n", "; "))
        return io.NodeOutput(_images.to_image(outs), _images.to_mask(coverage), warning)


NODES = [RevPersPasteBack]
