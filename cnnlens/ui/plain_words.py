"""The dashboard's words in plain English, for people who do not program.

Each page opens the topics it shows with :func:`plain_words`; the text lives here, in one
place, so the pages say the same thing the same way.
"""

from __future__ import annotations

import streamlit as st

__all__ = ["METHOD_SENTENCES", "WORDS", "method_words", "plain_words"]

WORDS = {
    "dataset": """
A **dataset** here is a folder of images with a table saying what each one
shows (its **label**). The **seed** makes the random pick repeatable: the same
seed always picks the same images, so a colleague who types the same seed sees
the same thing. The **test** images have no label: the network has to guess.
""",
    "drawing": """
**Draw a digit** on the pad with the mouse, a pen or a finger: when a stroke
ends, the answer and every map follow it. Before the network sees your
drawing, it is made the way the MNIST digits it learnt from were made: cut to
its ink, shrunk to fit a 20×20 box with its shape kept, and placed in a 28×28
square with its centre of weight in the middle. The small picture beside the
pad is exactly what goes in. A network that takes other pictures gets the whole
pad, resized. The link and "Save this view" keep your drawing.
""",
    "heatmap": """
A **heatmap** paints each number as a colour, the same way on every page and
in the saved pictures. Where a layer's values can go below zero (a convolution
before its ReLU, batch norm), **white** is zero, **red** is above zero and
**blue** below it: the deeper the colour, the further from zero. Where values
are never below zero (after a ReLU or pooling), **dark purple** is zero,
nothing found, and the colour brightens through blue and green to **yellow**
for the strongest. In a feature map, red or bright yellow marks the places
where the network found the pattern that channel looks for.
""",
    "convolution": """
A **convolution layer** slides many small filters (3×3 pixels here) over the
image. Each filter looks for one pattern, such as an edge at an angle, and
writes how strongly it finds it at each place. The result of one filter is a
**channel**; its picture is a **feature map**. Early layers find edges and
strokes; deeper layers combine them into larger shapes.
""",
    "relu": """
**ReLU** keeps positive values and turns negatives into zero: "pattern found"
stays, "opposite of the pattern" becomes nothing. **Batch norm** rescales each
channel so values stay in a useful range. **Pooling** keeps the largest value in
each 2×2 square, halving the map's size, so later layers see a wider area.
""",
    "brightness": """
**Red** (before a ReLU) or **bright yellow** (after it) means a strong response.
A conv or batch-norm layer comes before its ReLU, so its values can be
negative: **blue** places are where the image looks most unlike the pattern,
and **white** is zero. A channel's own bias can tint a whole empty background
light red or light blue: that is the bias, not a pattern. After the ReLU every
negative value is zero, **dark purple**. With *per channel* each map's colours
reach its own largest value, so faint channels are visible too; with *per
layer* all maps share one scale, so you can compare how strongly channels
respond. Laid over the image, a map is see-through where it is zero. A **dead**
channel is zero everywhere for this image.
""",
    "top_images": """
**Top images** are the images of the whole dataset that make one channel fire
most strongly: they show what pattern the channel has learned to look for.
Each crop is the part of the image the channel's strongest value depends on
(its **receptive field**); below it, the channel's map, coloured as on Feature
maps and all on one scale.
""",
    "class_matrix": """
The **class × channel** table averages each channel over all images of a class.
*Compared across classes*, a **red** cell means the channel responds to that
class more than to the others, **blue** less, **white** as much: a column with
one red cell is a detector that helps tell that class apart. *Mean activation*
paints the averages themselves, dark purple at zero to yellow for the
strongest (blue, white and red where averages go below zero). Click a cell to
see the images of that class that excite that channel most.
""",
    "embedding": """
The **embedding map** places every image as a point so that images the layer
describes alike lie close together. Colours are the labels: well-separated
colours mean this layer already tells the classes apart. A cross marks an
image the network classifies wrongly. **PCA** keeps the broad layout and is
instant; **t-SNE** and **UMAP** keep close neighbours together but take longer.
Draw a box or lasso around points to see those images.
""",
    "attribution": """
An **attribution map** says which parts of the image the network's answer rests
on. Each method asks the question its own way (through one late layer, the
**CAMs**; or through the pixels themselves), so the maps differ. Laid over the
image, a map is see-through where it finds no evidence and grows more opaque and
brighter (purple, then green, then yellow) where there is more: yellow places
pushed the network hardest towards the class. Hover a method's name for what it
does. Different maps of one answer are not all right: the two checks under each
one say how far to believe it.
""",
    "faithfulness": """
**Faithfulness** asks whether the map marks what the network really uses.
*Deletion* removes the pixels the map ranks highest first and watches the
class's probability: if it falls fast (a small area under the curve, near 0),
the map found what mattered. *Insertion* puts those pixels back first into a
blurred image: a fast rise (a large area, near 1) is good. One image says
little; the table at the bottom measures each method over many images of your
own data.
""",
    "sanity": """
The **sanity check** (Adebayo et al., 2018) gives the network random weights
and draws the map again. A map that explains the network must change: it
should not still match the first one. When it barely changes (rank correlation
ρ of 0.5 or more), the method mostly draws the image itself, its edges and
bright parts, whatever the network learned: it is flagged.
""",
    "compare": """
**Compare** puts two images side by side on the same channel, on one scale and
coloured as on Feature maps. The difference map is the first image's map minus
the second's: red where the first image excites the channel more, blue where
the second one does, white where both are equal.
""",
    "network": """
The **network** turns an image into an answer in steps, from left to right.
Each column is one step (a **layer**); its small squares are its **maps**, one
per pattern the layer looks for. A layer with many maps shows the strongest
few and says how many more it has. Under each column: how many maps it makes
and their size. The last column is the answer: how sure the network is of each
class. Click a small square to open it on the Feature maps page.
""",
    "network_colours": """
The squares are coloured as on Feature maps. A layer whose values go below zero
(a convolution, batch norm): **red** above zero (the pattern is there), **blue**
below (the opposite of the pattern), **white** zero. A layer never below zero
(after a ReLU, pooling): **dark purple** is zero, brightening to **yellow** for
the strongest. The input column follows the same rule. *Per map*: each square's
colours reach its own largest value, so faint maps show too. *Per layer*: all
squares of a column share one scale, so you can see which maps respond most.
Hover a square for its channel's number.
""",
    "network_graph": """
This network is not a simple chain of steps, so it is drawn as a **graph**:
each box is a part of the network, and arrows show where its numbers go next.
An arrow that jumps over boxes is a **shortcut** that adds a block's input to
its output. Under each name: the kind of part and the size of what it makes
(maps × height × width). Move the slider to open the boxes and see inside.
""",
    "value_conv": """
A convolution lays **a small stencil of weights** over a patch of its input
and multiplies each cell by the weight on top of it. Adding up those products
tells **how well this patch matches the stencil**: large when they agree,
negative when the patch looks like the opposite. The layer does this on every
input channel, adds the results and its **bias** (a fixed number of its own):
that is the value.
""",
    "value_batchnorm": """
**Batch norm** moves each channel's values to a common range: it subtracts the
channel's usual average, divides by its usual spread, then multiplies and
shifts by two numbers the network learned.
""",
    "value_relu": """
**ReLU keeps only the positive evidence**: a positive value passes unchanged,
anything below zero becomes 0.
""",
    "value_maxpool": """
**Max pooling keeps the strongest response in each 2×2 square** (or whatever
size the layer uses): it looks at a small square of its input and keeps only
the largest number, framed below.
""",
    "value_avgpool": """
**Average pooling** keeps the average of a small window of its input: the
numbers added up, divided by how many there are.
""",
    "value_scores": """
The network gives each class a **score**. To turn scores into chances that add
up to 100%, it raises *e* to each score (a bigger score gives a much bigger
number, and nothing is negative), then divides each by their total. Scores are
shifted by the largest first; the chances stay the same. This is **softmax**.
""",
    "card_looks_for": """
**What it looks for.** The network was asked to change a picture until this channel
fires as much as it can.
""",
    "card_legible": """
An image made from the dataset's own typical shapes, changed until this channel fires
as much as it can: it stays close to what the dataset's images look like, so you can
read it like one of them.
""",
    "card_mask": """
**Where it matters:** where in the picture the channel's answer changed most while it
was made (yellow: most).
""",
    "card_lucid": """
**Lucid's recipe, for comparison:** the same question started from noise, with no
idea of what the images look like. Often sharper, often a plain square or stripes.
""",
    "card_exaggeration": """
A synthesised image is the network's own exaggeration, not a photo: it shows the
pattern the channel wants, repeated and overdone.
""",
    "card_fires": """
**Where it fires most.** The images of the dataset that make this channel fire most,
cut to the part it looks at (outlined), with its map below.
""",
    "card_matters": """
**Where it counts most for the answer.** The images where this channel adds most to
the class the network picks (how strongly it fires times how much the answer grows
with it), with its map below.
""",
    "card_no_relevance": """
This channel adds nothing to any answer on this split: its share is zero for every
image, so it fires (or not) without changing what the network says.
""",
    "card_accentuated": """
**Its strongest image, accentuated.** The same image, nudged toward what the channel
wants: changed only a little, so you see which of its parts the channel would like more of.
""",
    "card_does": """
**What it does.** We switch this channel off (set it to zero) and see how the
network's answer changes: a bar below zero means that class lost confidence.
""",
    "card_kernel": """
This is the first layer, so its pattern is a small grid of weights laid straight on
the pixels: red weights want light there, blue weights want dark.
""",
    "atlas": """
The **channel atlas** shows, for every channel of the layer, the picture the
network paints when asked to make that channel fire as much as it can. Channels
with similar pictures look for similar patterns. The pictures are images, not
maps of values: a network that reads gray images paints in gray. The number on
each is its channel. Click a picture to open that channel's card on the Feature
maps page: its strongest images and what it does.
""",
}


METHOD_SENTENCES = {
    "gradcam": "weighs each channel of a late layer by how much the answer grows with it "
    "on average, and adds up the channels' maps.",
    "gradcam++": "like Grad-CAM, but weighs each place by how much it adds on its own, so "
    "several objects of one class all show.",
    "xgradcam": "like Grad-CAM, with each channel's weight scaled by where the channel "
    "fires, which makes the map sum to the answer's change more closely.",
    "layercam": "keeps, at each place, only the channels that raise the answer there: "
    "finer maps, and it works on early layers too.",
    "hirescam": "multiplies each channel's map by its own gradient place by place, so the "
    "map shows exactly the places the layer's evidence comes from.",
    "scorecam": "blanks the image outside each channel's map and asks the network again: "
    "no gradients, one forward per channel, slow on big layers.",
    "eigencam": "the layer's main pattern (its first principal component); it ignores the "
    "class, so it shows what the layer sees, not why it chose.",
    "saliency": "how much the answer changes when each pixel changes a little (the "
    "gradient): sharp but noisy.",
    "smoothgrad": "the saliency of 25 noisy copies of the image, averaged: less noise.",
    "integrated_gradients": "adds up the gradients on the way from a black image to this "
    "one: the map's sum is the answer's change from black to this image.",
    "occlusion": "covers each part of the image with a grey square and measures how much "
    "the answer drops: slow, but it asks the network directly.",
}
"""What each method does, in one plain sentence after its name."""


def plain_words(*topics: str, title: str = "What am I looking at?") -> None:
    """A collapsible explanation in plain words, for people who do not program."""
    with st.expander(title, icon=":material/help:"):
        st.markdown("\n".join(WORDS[topic] for topic in topics))


def method_words(titles: dict[str, str]) -> str:
    """Every attribution method in one plain sentence each, as a Markdown list."""
    return "\n".join(f"- **{titles[m]}** {sentence}" for m, sentence in METHOD_SENTENCES.items())
