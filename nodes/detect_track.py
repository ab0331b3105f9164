"""Detect and Track Faces: the frames of a clip in, aligned face crops out, one track id per person."""
from comfy_api.v0_0_2 import io

from revpers_core.faces import pipeline, tracks

from .common import category, check_options
from .detect_align import detect_faces, detection_inputs, detection_outputs


class RevPersDetectTrack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersDetectTrack",
            display_name="Detect and Track Faces (RevPers)",
            category=category("Faces"),
            description=(
                "Detect and Align Faces for the frames of a video (an IMAGE batch in time order: from Load Video, "
                "VideoHelperSuite's Load Video, or a folder of frames). Besides finding and aligning every face, "
                "it links the faces of successive frames into tracks, one per person (box overlap along the "
                "person's motion, plus ArcFace similarity, which also finds a person again after a longer "
                "absence), and puts back the faces the detector missed for up to max_gap frames between two "
                "sightings (motion blur, a turned head): their place is interpolated along the track and they "
                "are anonymized like the others, and reported. A longer gap is not guessed: the warning says "
                "which track was not seen in which frames. The face records carry frame index and track id, in "
                "the order of Detect and Align (frame, then left to right); with ArcFace Embedding set to 'per "
                "track', each person gets one new identity in every frame. Frames in which nobody is seen pass "
                "through unchanged (listed in the warning), so frame count and order are kept."),
            inputs=detection_inputs(
                io.Image.Input("images", tooltip="The frames of a clip, in time order."),
                io.Combo.Input(
                    "on_no_face", options=list(pipeline.ON_NO_FACE_IN_FRAME), default=pipeline.FRAME_UNCHANGED,
                    tooltip="A frame in which nobody is seen: pass it through unchanged and list it in the "
                            "warning (default: the clip keeps every frame), stop with an error, or pass it "
                            "through marked NOT ANONYMIZED. With the default, a clip with no face in any frame "
                            "stops.")) + [
                io.Int.Input(
                    "max_gap", optional=True, default=tracks.DEFAULT_MAX_GAP, min=0, max=tracks.MAX_GAP,
                    tooltip="Longest run of frames in which a tracked face may go undetected and still be "
                            "anonymized there (its place interpolated). 0 = never interpolate. Longer gaps are "
                            "reported, not guessed."),
                io.Float.Input(
                    "min_iou", optional=True, default=tracks.DEFAULT_MIN_IOU, min=0.01, max=1.0, step=0.01,
                    tooltip="Overlap a face needs with the box a track is expected at (last box moved along "
                            "its motion) to continue it."),
                io.Float.Input(
                    "min_similarity", optional=True, default=tracks.DEFAULT_MIN_SIMILARITY, min=-1.0, max=1.0,
                    step=0.01,
                    tooltip="ArcFace cosine similarity to a track's mean identity that also continues it, at "
                            "any distance and after any gap (the same person seen again). 1 = overlap only."),
            ],
            outputs=detection_outputs(),
        )

    @classmethod
    def validate_inputs(cls, on_no_face=None, beyond_max_faces=None):
        return check_options(cls, on_no_face=on_no_face, beyond_max_faces=beyond_max_faces)

    @classmethod
    def execute(cls, analysis, images, crop_size, padding, threshold, min_face_size, max_faces,
                expected_faces, on_no_face, beyond_max_faces=pipeline.BEYOND_MAX_FACES[0],
                max_gap=tracks.DEFAULT_MAX_GAP, min_iou=tracks.DEFAULT_MIN_IOU,
                min_similarity=tracks.DEFAULT_MIN_SIMILARITY):
        settings = tracks.TrackSettings(int(max_gap), float(min_iou), float(min_similarity))
        outputs = detect_faces(analysis, images, crop_size, padding, threshold, min_face_size, max_faces,
                               expected_faces, on_no_face, beyond_max_faces, tracking=settings)
        warning, faces = outputs[3], outputs[1]
        # the warning for people; the long gaps per track and frame range as data (the CLI reads only that)
        return io.NodeOutput(*outputs, ui={"text": [warning] if warning else [],
                                           "revpers_tracks": [faces.tracking_summary()]})


NODES = [RevPersDetectTrack]
