"""glimpse: saliency-guided sequential glimpses that name the multiset of objects in an image.

Importing the package registers the gymnasium environments (``glimpse/MultisetMNIST-v0``,
``glimpse/Multiset-v0``); that costs a gymnasium import only, nothing heavier.
"""
from glimpse.env.registration import register_envs

register_envs()
