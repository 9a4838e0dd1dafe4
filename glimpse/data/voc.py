"""PASCAL VOC folders (VOC 2007 ... 2012): ImageSets/Main/<set>.txt, Annotations/*.xml, JPEGImages/.

The XML is read with the standard library: torchvision's VOCDetection wants the folder one
level above VOCdevkit and returns untyped dicts, so it would add a layout rule and save no
code. VOC coordinates are 1-based inclusive pixels; a box (xmin, ymin, xmax, ymax) becomes
[xmin - 1, ymin - 1, xmax, ymax] with exclusive ends, as everywhere else in the project.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from glimpse.data.detection import Annotations, make_record

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_folder(root: str, year: str | int) -> str:
    """``root/VOC<year>`` or ``root/VOCdevkit/VOC<year>``, whichever exists."""
    for folder in (os.path.join(root, f"VOC{year}"), os.path.join(root, "VOCdevkit", f"VOC{year}")):
        if os.path.isdir(folder):
            return folder
    raise FileNotFoundError(
        f"no VOC{year} folder under data.root={root}: expected {os.path.join(root, f'VOC{year}')} (data.root is the "
        f"VOCdevkit folder) holding Annotations/, JPEGImages/ and ImageSets/Main/"
    )


def _text(node: ET.Element, path: str, xml_file: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"{xml_file}: <{path}> is missing; not a VOC annotation")
    return found.text.strip()


def read_voc(root: str, year: str | int, image_set: str, keep_difficult: bool = False) -> Annotations:
    """One record per image listed in ``ImageSets/Main/<image_set>.txt``; classes in VOC order.

    ``difficult`` objects stay out of the multiset unless ``keep_difficult`` (as the VOC
    benchmark ignores them); a class name outside the 20 VOC classes is an error.
    """
    folder = voc_folder(root, year)
    list_file = os.path.join(folder, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"image set file {list_file} does not exist; VOC{year} has train, val, trainval (and test in the test "
            f"archive) — pick another data.*image_set, or null to hold out / reuse a split"
        )
    with open(list_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    records = []
    for image_id in ids:
        xml_file = os.path.join(folder, "Annotations", f"{image_id}.xml")
        if not os.path.isfile(xml_file):
            raise FileNotFoundError(f"annotation file {xml_file} (listed in {list_file}) does not exist")
        try:
            tree = ET.parse(xml_file).getroot()
        except ET.ParseError as err:
            raise ValueError(f"annotation file {xml_file} is not valid XML ({err})") from err
        labels, boxes = [], []
        for obj in tree.iter("object"):
            name = _text(obj, "name", xml_file)
            if name not in index:
                raise ValueError(f"{xml_file}: object class {name!r} is not a VOC class ({', '.join(VOC_CLASSES)})")
            difficult = obj.find("difficult")
            if not keep_difficult and difficult is not None and (difficult.text or "0").strip() == "1":
                continue
            xmin, ymin, xmax, ymax = (float(_text(obj, f"bndbox/{k}", xml_file)) for k in ("xmin", "ymin", "xmax", "ymax"))
            labels.append(index[name])
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        file_name = tree.findtext("filename", default=f"{image_id}.jpg").strip()
        width, height = int(float(_text(tree, "size/width", xml_file))), int(float(_text(tree, "size/height", xml_file)))
        records.append(make_record(os.path.join(folder, "JPEGImages", file_name), width, height, labels, boxes, xml_file))
    return Annotations(list(VOC_CLASSES), records, list_file)
