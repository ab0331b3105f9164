"""Reading photos the way the workflows see them, whatever their PIL mode (shared by the CLI's
upload and the offline audit): 8-bit RGB plus the alpha channel, if any, kept apart."""
import numpy as np


# How ComfyUI's LoadImage would misread a mode: 16-bit greyscale is clipped to white there, so
# these photos are uploaded as the 8-bit RGB PNG read here; RGB, RGBA and L go up as they are.
UPLOAD_AS_IS = ("RGB", "RGBA", "L")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def photo_has_alpha(path):
    """Whether the photo carries transparency: an alpha band (RGBA, LA, PA, RGBa) or palette/colour-key
    transparency (P, L, RGB with a tRNS chunk). Reads only the header."""
    from PIL import Image
    with Image.open(path) as im:
        return bool(im.has_transparency_data)


def read_photo(path):
    """The photo as the workflow sees it: (8-bit "RGB" image, its alpha as an 8-bit "L" image or None,
    the mode it had, its frame count). Read as ComfyUI's LoadImage reads a picture (EXIF orientation
    applied; the first frame), but 16-bit greyscale ("I;16", or "I" from older Pillow) is scaled to 8
    bits (/257; LoadImage would clip it to white), float ("F") in 0..1 is scaled by 255, CMYK goes
    through its embedded ICC profile to sRGB when it has one (else Pillow's plain conversion),
    palette and grey photos are expanded to RGB. Alpha, where the photo has any, comes out as the
    RGBA conversion's alpha: an alpha band as it is, palette transparency as 0/255 per entry."""
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        frames = getattr(src, "n_frames", 1)
        src.seek(0)
        im = ImageOps.exif_transpose(src)
    mode = im.mode
    alpha = None
    if im.has_transparency_data:
        try:
            alpha = im.convert("RGBA").getchannel("A")
        except ValueError:
            alpha = None  # a mode Pillow cannot expand (e.g. "La"): treated as opaque
    try:
        if mode in _SIXTEEN_BIT:
            values = np.asarray(im).astype(np.float64)
            rgb = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
        elif mode == "F":
            values = np.asarray(im).astype(np.float64)
            if values.size and np.nanmax(values) <= 1.0:
                values = values * 255.0
            rgb = Image.fromarray(np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8), "L").convert("RGB")
        elif mode == "CMYK" and im.info.get("icc_profile"):
            import io
            from PIL import ImageCms
            try:
                rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"])),
                                                ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError, ValueError):
                rgb = im.convert("RGB")
        elif mode == "RGB":
            rgb = im
        else:
            rgb = im.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{path}: a picture in mode {mode} cannot be read as RGB ({e}); save it as an RGB "
                         "or RGBA PNG") from e
    return rgb, alpha, mode, frames


def read_rgb_float(path):
    """The photo as an HxWx3 float32 array in 0..1 (what the face code takes)."""
    rgb, _, _, _ = read_photo(path)
    return np.asarray(rgb, dtype=np.float32) / 255.0
