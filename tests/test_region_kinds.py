"""The one table of region kinds (rgpt_llava.regions.kinds): everything that lists or checks region forms follows it,
a kind registered here (a circle) is parsed, served and documented by the CLI with no other module edited, and the
region modules import neither each other's private names nor (geometry <-> sam) each other."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from rgpt_llava.geometry import parse_region, process_regions
from rgpt_llava.regions import kinds as K
from rgpt_llava.regions.rasterize import as_numbers, values_region
from rgpt_llava.serve import inputs as I

ROOT = Path(__file__).resolve().parents[1]
# 336 x 336 image, CLIP-336 settings: pad, resize and crop are all the identity, so a mask comes out pixel for pixel.
PROC = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
SIZE = (336, 336)


# ----------------------------------------------------------------------------------------------------------------------
# Derived from the table
# ----------------------------------------------------------------------------------------------------------------------
def test_the_schema_file_is_the_table_written_out():
    on_disk = json.loads(I.SCHEMA_PATH.read_text())
    assert on_disk == K.region_schema(), \
        "regenerate it: python -m rgpt_llava.regions.kinds > rgpt_llava/serve/region.schema.json"
    assert [d["$ref"].rsplit("/", 1)[1] for d in on_disk["oneOf"]] == \
        [k.key for k in K.KINDS if k.schema is not None] == ["box", "polygon", "rle", "mask", "points", "scribble"]
    assert K.companions() == {"snap": "box", "labels": "points"}


def test_messages_and_help_name_every_kind():
    for kind in K.KINDS:
        if kind.cli:
            assert f"'{kind.cli}'" in K.spec_help() and kind.cli in K.cli_help()
        if kind.key and not kind.needs_sam:
            assert f"'{kind.key}'" in K.spec_help()
    assert K.cli_help().index("with --sam-model") < K.cli_help().index("point:x,y[,label]")
    from rgpt_llava.serve.cli import build_parser
    assert "snap:x1,y1,x2,y2" in " ".join(build_parser().format_help().split())


def test_the_docs_list_every_kind():
    docs = (ROOT / "docs" / "MODEL.md").read_text() + (ROOT / "docs" / "SERVING.md").read_text()
    serving = (ROOT / "docs" / "SERVING.md").read_text()
    for kind in K.KINDS:
        if kind.cli:
            assert f"`{kind.name}:" in docs, f"docs/MODEL.md or SERVING.md does not list the CLI form {kind.cli}"
        if kind.schema is not None:
            assert f'{{"{kind.key}": ' in serving, f"docs/SERVING.md does not list the REGION {{\"{kind.key}\": ...}}"


def test_needs_sam_is_the_tables_flag():
    assert [k.name for k in K.KINDS if k.needs_sam] == ["point", "scribble", "snap"]
    # A box with "snap": true is a prompt even beside a segmentation (SAM kinds outrank every region kind).
    assert K.needs_sam({"box": [1, 2, 3, 4], "snap": True, "segmentation": [[0, 0, 5, 0, 5, 5]]})
    # A COCO annotation means its segmentation, not its bbox.
    ann = {"bbox": [0, 0, 50, 50], "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]}
    assert parse_region(ann, 0, SIZE).kind == "polygon"


# ----------------------------------------------------------------------------------------------------------------------
# A new kind touches the table only
# ----------------------------------------------------------------------------------------------------------------------
def circle(values, at):
    """Pixels whose centre lies within r of (cx, cy), in original pixels."""
    numbers = as_numbers(values, at.name, "circle")
    if len(numbers) != 3 or numbers[2] <= 0:
        raise ValueError(f"{at.name}: a circle needs cx, cy and a radius r > 0, got {numbers}")
    cx, cy, r = numbers
    width, height = at.image_size
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = ((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r).astype(np.float64)
    return values_region(inside, "circle", at.index, at.image_size, at.source, "circle")


CIRCLE = K.RegionKind(
    "circle", "a disc: the pixels whose centre is within r of (cx, cy)", cli="circle:cx,cy,r", key="circle",
    from_text=lambda body, at: circle(body.replace(",", " ").split(), at),
    from_dict=lambda spec, at: circle(spec["circle"], at),
    schema={"type": "object", "required": ["circle"], "additionalProperties": False,
            "properties": {"circle": {"type": "array", "items": {"$ref": "#/$defs/number"}, "minItems": 3,
                                      "maxItems": 3}}})


@pytest.fixture
def with_circle():
    K.register_kind(CIRCLE)
    try:
        yield CIRCLE
    finally:
        K.unregister_kind("circle")


def test_before_registration_a_circle_is_unknown():
    with pytest.raises(ValueError, match=r"region 1 \(circle:5,5,1\): unknown region kind 'circle'"):
        parse_region("circle:5,5,1", 0, SIZE)
    with pytest.raises(I.InputError, match=r"unknown REGION field\(s\) \['circle'\]"):
        I.parse_regions([({"circle": [5, 5, 1]}, "r")], SIZE)


def test_a_registered_circle_is_parsed_everywhere(with_circle):
    # Radius 1 around the pixel corner (5, 5): the four pixels meeting there have their centres at distance
    # sqrt(0.5^2 + 0.5^2) = 0.71 <= 1; the next ones out at sqrt(1.5^2 + 0.5^2) = 1.58 > 1. Exactly the box 4,4,6,6.
    box = process_regions(["box:4,4,6,6"], SIZE, PROC)
    assert torch.equal(process_regions(["circle:5,5,1"], SIZE, PROC), box)
    assert torch.equal(process_regions([{"circle": [5, 5, 1]}], SIZE, PROC), box)

    # Radius 2: centre offsets (0.5, 0.5) -> 0.5, (1.5, 0.5) -> 2.5 are <= r^2 = 4; (1.5, 1.5) -> 4.5 and
    # (2.5, 0.5) -> 6.5 are not. So the 4 x 4 block [3, 7) x [3, 7) without its 4 corners: 12 pixels (pi r^2 = 12.6).
    mask = process_regions(["circle:5,5,2"], SIZE, PROC)[0]
    expected = torch.zeros(336, 336)
    expected[3:7, 3:7] = 1
    expected[3, 3] = expected[3, 6] = expected[6, 3] = expected[6, 6] = 0
    assert torch.equal(mask, expected) and mask.sum() == 12

    region = parse_region({"circle": [5, 5, 2]}, 1, SIZE)
    assert region.kind == "circle" and region.box == (3.0, 3.0, 7.0, 7.0) and region.name == \
        "region 2 ({'circle': [5, 5, 2]})"
    with pytest.raises(ValueError, match=r"region 3 \(circle:5,5,0\): a circle needs cx, cy and a radius r > 0"):
        parse_region("circle:5,5,0", 2, SIZE)
    assert not K.needs_sam("circle:5,5,1")

    # Serving: the REGION JSON is checked against the schema the table makes, then parsed as above.
    assert "circle" in I.REGION_KINDS and I.region_schema()["oneOf"][-1] == {"$ref": "#/$defs/circle"}
    [served] = I.parse_regions([({"circle": [5, 5, 2]}, "regions[0]")], SIZE)
    assert served.kind == "circle" and served.box == (3.0, 3.0, 7.0, 7.0)
    with pytest.raises(I.InputError, match=r"regions\[0\]: circle: \[5, 5\] is too short"):
        I.parse_regions([({"circle": [5, 5]}, "regions[0]")], SIZE)
    with pytest.raises(I.InputError, match=r"exactly one of box, polygon, rle, mask, points, scribble, circle"):
        I.parse_regions([({"circle": [5, 5, 2], "box": [0, 0, 1, 1]}, "regions[0]")], SIZE)

    # The CLI's help and the "expected ..." of an unknown spec describe it.
    from rgpt_llava.serve.cli import build_parser
    assert "circle:cx,cy,r (a disc:" in " ".join(build_parser().format_help().split())
    with pytest.raises(ValueError, match=r"unknown region kind 'oval'; expected .*'circle:cx,cy,r'.*'circle'"):
        parse_region("oval:1", 0, SIZE)


def test_registration_refuses_clashes():
    with pytest.raises(ValueError, match="clashes with the kind 'box'"):
        K.register_kind(K.RegionKind("box", "again", cli="box:x"))
    with pytest.raises(ValueError, match="must start with 'disc:'"):
        K.register_kind(K.RegionKind("disc", "a disc", cli="circle:cx,cy,r"))
    assert [k.name for k in K.KINDS][-1] == "snap"


# ----------------------------------------------------------------------------------------------------------------------
# Imports
# ----------------------------------------------------------------------------------------------------------------------
REGION_MODULES = ["rgpt_llava/geometry.py", "rgpt_llava/sam.py", "rgpt_llava/serve/inputs.py",
                  "rgpt_llava/serve/cli.py", "rgpt_llava/serve/page.py",
                  *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rgpt_llava" / "regions").glob("*.py"))]


@pytest.mark.parametrize("path", REGION_MODULES)
def test_no_private_names_imported(path):
    tree = ast.parse((ROOT / path).read_text())
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.startswith("rgpt_llava") for alias in node.names
               if alias.name.startswith("_")]
    assert private == []


def test_no_module_imports_another_modules_private_names():
    """The whole package, as REGION_MODULES above: a name that starts with _ is its module's own."""
    found = set()
    for path in sorted((ROOT / "rgpt_llava").rglob("*.py")):
        tree = ast.parse(path.read_text())
        found |= {(str(path.relative_to(ROOT)), f"{node.module}.{alias.name}") for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgpt_llava")
                  for alias in node.names if alias.name.startswith("_")}
    assert found == set()


def test_geometry_and_sam_do_not_import_each_other():
    imported = {p: {n.module for n in ast.walk(ast.parse((ROOT / p).read_text())) if isinstance(n, ast.ImportFrom)}
                | {a.name for n in ast.walk(ast.parse((ROOT / p).read_text())) if isinstance(n, ast.Import)
                   for a in n.names}
                for p in ("rgpt_llava/geometry.py", "rgpt_llava/sam.py")}
    assert "rgpt_llava.sam" not in imported["rgpt_llava/geometry.py"]
    assert "rgpt_llava.geometry" not in imported["rgpt_llava/sam.py"]
    # and the kinds need neither: importing them loads no SAM and no image geometry
    code = ("import sys, rgpt_llava.regions; "
            "print(sorted(m for m in ('rgpt_llava.sam', 'rgpt_llava.geometry') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_import_cycle_in_the_package():
    """Every import of one rgpt_llava module by another (deferred imports inside functions too) forms no cycle: a
    module's dependencies can be read without coming back to it."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "rgpt_llava").rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgpt_llava"):
                graph[name] |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                                for a in node.names} & modules.keys()
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names} & modules.keys()
    graph = {name: deps - {name} for name, deps in graph.items()}
    # depth-first search; a module met again while still on the path closes a cycle
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert graph["rgpt_llava.serve.openai_api"] >= {"rgpt_llava.serve.chat", "rgpt_llava.serve.backends"}  # real edges seen
