"""Campaigns (serving/segments/campaigns.py, `segments campaign`): members at the start against the holdout kept at
creation, measured by hand on the tiny data of test_lift, and over time. Store tests on SQLite and PostgreSQL."""

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from test_lift import END, HELD, START, TARGETED, tiny  # noqa: F401 - tiny is a fixture

from features.segments import parse_segments
from serving.segments.campaigns import CampaignError, create_campaign, list_campaigns, measure_campaign
from serving.segments.store import SegmentStore

DEFINITIONS = parse_segments("holdout_percent: 50\nsegments:\n  promo: {when: orders_count_90d >= 0}\n")
LATER_DEFINITIONS = parse_segments("holdout_percent: 10\nsegments:\n  promo: {when: orders_count_90d >= 0}\n")


@pytest.fixture
def store(store_url):
    store = _members(SegmentStore(store_url))
    yield store
    store.close()


def _members(store: SegmentStore) -> SegmentStore:
    before = START - timedelta(days=3)
    change = {"segment": "promo", "cause": [], "source": "refresh"}
    with store.transaction() as conn:  # members at the start: TARGETED + HELD; c5 left before, c6 joined after
        store.write.record(conn, [{**change, "customer_id": c, "change": "entered", "at": before}
                                  for c in [*TARGETED, *HELD, "c5"]], {}, before)
        store.write.record(conn, [{**change, "customer_id": "c5", "change": "exited", "at": START - timedelta(days=1)},
                                  {**change, "customer_id": "c6", "change": "entered", "at": START + timedelta(days=2)}],
                           {}, START + timedelta(days=2))
    return store


def test_a_campaign_is_measured_on_its_members_at_the_start_by_hand(store, tiny):  # noqa: F811
    campaign = create_campaign(store, DEFINITIONS, "june", "promo", START, END, "email", "conversion_rate")
    assert list_campaigns(store) == [campaign] and campaign.holdout_percent == 50

    # The definitions changed after the campaign was created: the groups stay those of its 50% holdout.
    measured = measure_campaign(store, LATER_DEFINITIONS, campaign, tiny, step_days=7)

    assert measured.through == END  # the data run to the end of the campaign
    table = measured.result.table().set_index("metric")
    assert table.loc["customers", ["targeted", "holdout"]].tolist() == [4, 2]  # c5 and c6 were not members then
    assert table.loc["conversion_rate", ["targeted", "holdout"]].tolist() == pytest.approx([0.75, 0.5])
    # By hand: c8 buys on 06-01, c2 on 06-03, c3 on 06-05 (targeted); c1 on 06-15 (held out; windows end before)
    timeline = measured.timeline.set_index("through")
    expected = {"2026-06-08": (0.75, 0.0), "2026-06-15": (0.75, 0.0), "2026-06-22": (0.75, 0.5),
                "2026-06-29": (0.75, 0.5), "2026-07-01": (0.75, 0.5)}
    assert [d.strftime("%Y-%m-%d") for d in timeline.index] == list(expected)
    assert timeline[["targeted", "holdout"]].to_numpy().ravel().tolist() == pytest.approx(
        [rate for rates in expected.values() for rate in rates])
    assert json.dumps(measured.to_dict())  # JSON-ready


def test_bad_campaigns_say_what_to_change(store):
    with pytest.raises(CampaignError) as error:
        create_campaign(store, DEFINITIONS, "x", "nope", END, START, " ", "revenue")
    for problem in ("no segment named 'nope'", "is not after the start", "channel is empty", "goal must be one of"):
        assert problem in str(error.value)
    create_campaign(store, DEFINITIONS, "once", "promo", START, END, "sms")
    with pytest.raises(CampaignError, match="exists already"):
        create_campaign(store, DEFINITIONS, "once", "promo", START, END, "sms")


def test_the_cli_creates_lists_and_measures(tmp_path, tiny):  # noqa: F811
    """On SQLite only: the store behaviour is tested on both stores above; this is the command's wiring."""
    store_url = f"sqlite:///{tmp_path / 'cli.db'}"
    _members(SegmentStore(store_url))
    segments_file = tmp_path / "segments.yaml"
    segments_file.write_text("holdout_percent: 50\nsegments:\n  promo: {when: orders_count_90d >= 0}\n")
    cli = [str(Path(sys.executable).with_name("segments")), "campaign"]
    common = ["--db", store_url, "--segments", str(segments_file)]
    created = subprocess.run([*cli, "create", "--name", "june", "--segment", "promo", "--from", "2026-06-01",
                              "--to", "2026-07-01", "--channel", "email", *common], capture_output=True, text=True,
                             timeout=120, check=False)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run([*cli, "list", "--db", store_url], capture_output=True, text=True, timeout=120,
                            check=False)
    assert "june" in listed.stdout and "promo" in listed.stdout
    data = tmp_path / "data"
    data.mkdir()
    tiny.con.execute(f"COPY (SELECT * FROM transactions) TO '{data / 'transactions.csv'}' (HEADER)")
    measured = subprocess.run([*cli, "measure", "june", "--data", str(data), "--json", *common],
                              capture_output=True, text=True, timeout=120, check=False)
    assert measured.returncode == 0, measured.stderr
    body = json.loads(measured.stdout)
    assert body["lift"]["customers"] == {"targeted": 4, "holdout": 2} and len(body["timeline"]) == 5
    missing = subprocess.run([*cli, "measure", "nope", "--data", str(data), *common], capture_output=True,
                             text=True, timeout=120, check=False)
    assert missing.returncode == 2 and "no campaign named 'nope'" in missing.stdout + missing.stderr
