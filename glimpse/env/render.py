"""``render()`` of the env: the canvas with every glimpse and every emitted label drawn (PIL)."""
from __future__ import annotations

import numpy as np
from torch import Tensor

LOOK_COLOUR, RIGHT_COLOUR, WRONG_COLOUR = (255, 200, 0), (0, 220, 0), (255, 40, 40)


def draw_episode(image: Tensor, task, history: list[tuple[float, float, int, bool]], emitted: Tensor,
                 min_side: int = 300) -> np.ndarray:
    """RGB uint8 ``(H', W', 3)``: the image scaled up to ``min_side``, then per step the glimpse
    patch (yellow: looked, green: a right decision, red: a wrong one) with the emitted label
    or STOP, and below the canvas the multiset emitted so far."""
    from PIL import Image, ImageDraw

    low, high = task.image_bounds
    pixels = ((image.detach().float().cpu().clamp(low, high) - low) / (high - low) * 255).round().byte()
    pixels = pixels.permute(1, 2, 0).numpy()
    pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] != 3 else pixels
    if pixels.shape[2] != 3:  # neither grey nor RGB: show the channel mean
        pixels = np.repeat(pixels.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    h, w = pixels.shape[:2]
    scale = max(1, -(-min_side // min(h, w)))
    canvas = Image.fromarray(pixels).resize((w * scale, h * scale), Image.NEAREST)
    banner = 14
    frame = Image.new("RGB", (canvas.width, canvas.height + banner), (0, 0, 0))
    frame.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(frame)
    half = task.glimpse_size * scale / 2
    for step, (x, y, decision, correct) in enumerate(history, start=1):
        x, y = x * scale, y * scale
        looked = decision == task.look
        colour = LOOK_COLOUR if looked else RIGHT_COLOUR if correct else WRONG_COLOUR
        draw.rectangle([x - half, y - half, x + half, y + half], outline=colour, width=1 if looked else 2)
        if not looked:
            text = "STOP" if decision == task.stop else task.class_names[decision]
            draw.text((x - half + 2, y - half + 1), f"{step}:{text}", fill=colour)
    names = [task.class_names[c] for c, n in enumerate(emitted.tolist()) for _ in range(n)]
    draw.text((2, canvas.height + 1), "emitted {" + ", ".join(names) + "}", fill=(255, 255, 255))
    return np.asarray(frame)
