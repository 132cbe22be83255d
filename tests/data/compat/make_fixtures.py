# ruff: noqa - a record of how the fixtures were written, with the module paths of that time
"""Produce the compatibility fixtures with today's code (module names before the layout change)."""
import json
import sys
from pathlib import Path

import yaml
from ase.build import bulk
from monty.json import MontyEncoder, jsanitize

out = Path(sys.argv[1])
cfg = yaml.safe_load(Path(__file__).resolve().parents[3] / 'configs' / 'cu-emt.yaml'.read_text())
cfg['md']['total_steps'] = 9
cfg['name'] = 'compat-emt'
cfg['validation'] = {'every': 'end'}
Path('compat-emt.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
from otf_flows import OtfMDMaker

maker = OtfMDMaker.from_yaml('compat-emt.yaml')
(out / 'maker.json').write_text(json.dumps(maker, cls=MontyEncoder, indent=1))
flow = maker.make(bulk('Cu', 'fcc', a=3.61, cubic=True))
(out / 'flow.json').write_text(json.dumps(jsanitize(flow.as_dict(), strict=True, allow_bson=False, enum_values=True), indent=1))
from otf_flows.managers.fireworks import campaign_workflow
from otf_flows.managers.local import prepare_campaign
from otf_flows.store import OtfStore

st = OtfStore(str(Path('fwstore').resolve()))
cfg2 = maker.campaign_config()
f = prepare_campaign(cfg2, st)
wf = campaign_workflow(f, '/nonexistent/otf-store', cfg2.name)
(out / 'workflow.json').write_text(json.dumps(wf.to_dict(), indent=1, cls=MontyEncoder))
wf2 = campaign_workflow(f, '/nonexistent/otf-store', cfg2.name, inline_light=True)
(out / 'workflow_inline.json').write_text(json.dumps(wf2.to_dict(), indent=1, cls=MontyEncoder))
