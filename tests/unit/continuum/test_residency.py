"""The residency policy: loading, deploy refusals, uplink plans, ingest, training, explain, CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from continuum import cli
from continuum.cli import main
from continuum.cli import policy as policy_cli
from continuum.errors import ConfigError, PlacementError, SpecError
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER, LabelSelector
from continuum.residency import (
    Decision,
    ResidencyPolicy,
    check_pipeline,
    check_placement,
    derive_training_selector,
    explain,
    hash_field,
    ingest_allows,
    load_policy,
    pipeline_decisions,
    route,
    uplink_plan,
)
from continuum.spec import DataClass, PipelineSpec

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_POLICY = ROOT / "deploy" / "policy" / "residency.example.yaml"
SALT = b"s" * 32

CAM_LUX_1 = {TIER: "edge", SITE: "lux-1", COUNTRY: "LU", JURISDICTION: "LU"}
CAM_LUX_2 = {TIER: "edge", SITE: "lux-2", COUNTRY: "LU", JURISDICTION: "LU"}
CLOUD_LU = {TIER: "cloud", SITE: "lux-dc", COUNTRY: "LU", JURISDICTION: "LU"}
CLOUD_DE = {TIER: "cloud", SITE: "fra-dc", COUNTRY: "DE", JURISDICTION: "DE"}
CLOUD_US = {TIER: "cloud", SITE: "iad-dc", COUNTRY: "US", JURISDICTION: "US"}
NODES = {"cam-lux-1": CAM_LUX_1, "cloud-lu-1": CLOUD_LU, "cloud-de-1": CLOUD_DE}
#: The nodes that can run training work: the camera captures, it cannot train (issue 17:
#: where the policy refuses the central pool, a site's own trainer would train federated).
COMPUTE = ["cloud-lu-1", "cloud-de-1"]


@pytest.fixture(scope="module")
def policy() -> ResidencyPolicy:
    """The shipped example: restricted stays on site, confidential in LU, internal in the EU."""
    return load_policy(EXAMPLE_POLICY)


def pipeline(
    *,
    data_class: str = "confidential",
    tenant: str = "bank",
    edge_where: dict[str, str] | None = None,
    retrain_where: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
    retrain: bool = True,
) -> PipelineSpec:
    """A minimal valid pipeline with the parts residency looks at."""
    data: dict[str, Any] = {
        "name": "payments-fraud",
        "tenant": tenant,
        "data_class": data_class,
        "edge": {
            "model": "scorer",
            "input": {"shape": [30], "fields": fields or {}},
            "where": edge_where if edge_where is not None else {TIER: "edge", SITE: "lux-*"},
        },
        "uplink": {"policy": {"kind": "random", "rate": 0.1}},
    }
    if retrain:
        data["retrain"] = {"trainer": "pkg.mod:train", "where": retrain_where or {}}
    return PipelineSpec.from_dict(data)


class TestPolicyLoading:
    def test_example_policy_maps_each_class_to_its_labels(self, policy: ResidencyPolicy) -> None:
        assert policy.rule(DataClass.CONFIDENTIAL, "processing")[1].labels == {
            JURISDICTION: ("LU",)
        }
        assert policy.rule(DataClass.RESTRICTED, "storage")[1].same_site
        assert "NO" not in policy.rule(DataClass.INTERNAL, "processing")[1].labels[COUNTRY]
        assert "LU" in policy.rule(DataClass.INTERNAL, "processing")[1].labels[COUNTRY]
        assert policy.rule(DataClass.PUBLIC, "processing")[1].is_empty()

    def test_policy_round_trips_through_its_dump(self, policy: ResidencyPolicy) -> None:
        assert ResidencyPolicy.from_dict(policy.model_dump()) == policy

    def test_tenant_override_replaces_one_class_and_names_itself_in_the_rule(
        self, policy: ResidencyPolicy
    ) -> None:
        assert policy.field_action(DataClass.RESTRICTED, "acme") == "keep_at_edge"
        assert policy.field_action(DataClass.RESTRICTED, "bank") == "drop"
        assert policy.rule(DataClass.RESTRICTED, "processing", "acme")[0] == (
            "tenants.acme.restricted"
        )
        assert policy.rule(DataClass.CONFIDENTIAL, "processing", "acme")[0] == "confidential"

    def test_split_processing_and_storage_name_the_purpose(self) -> None:
        loaded = ResidencyPolicy.from_yaml(
            _policy_yaml(
                confidential="{processing: {jurisdiction: [LU, BE]}, storage: {jurisdiction: LU}}"
            )
        )
        assert loaded.rule(DataClass.CONFIDENTIAL, "storage") == (
            "confidential.storage",
            loaded.classes.confidential.storage,
        )
        assert loaded.classes.confidential.processing.labels[JURISDICTION] == ("LU", "BE")

    @pytest.mark.parametrize(
        ("text", "field", "says"),
        [
            (
                "confidential: {jurisdication: [LU]}",
                "classes.confidential.jurisdication",
                "did you mean 'jurisdiction'?",
            ),
            ("internal: {country: [NO]}", "classes.internal.country", 'write "NO"'),
            ("internal: {country: []}", "classes.internal.country", "must list the allowed"),
            ("restricted: {same_site: maybe}", "classes.restricted.same_site", "true or false"),
            ("public: {field_action: shred}", "classes.public.field_action", "'keep_at_edge'"),
            ("confidential: {tier: [fog]}", "classes.confidential.tier", "tiers are edge"),
            (
                "confidential: {continuum.io/jurisdicton: [LU]}",
                'classes.confidential["continuum.io/jurisdicton"]',
                'did you mean "continuum.io/jurisdiction"?',
            ),
            (
                "confidential: {jurisdiction: [LU], storage: {}}",
                "classes.confidential.jurisdiction",
                "mixes processing/storage",
            ),
        ],
    )
    def test_malformed_rule_names_the_field_and_the_fix(
        self, text: str, field: str, says: str
    ) -> None:
        key = text.partition(":")[0]
        with pytest.raises(SpecError) as caught:
            ResidencyPolicy.from_yaml(_policy_yaml(**{key: text.partition(": ")[2]}))
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field}: ")
        assert says in str(caught.value)

    def test_a_missing_class_is_an_error_not_anywhere(self) -> None:
        text = _policy_yaml().replace("  restricted: {same_site: true}\n", "")
        with pytest.raises(SpecError) as caught:
            ResidencyPolicy.from_yaml(text)
        assert caught.value.field == "classes.restricted"
        assert "`restricted: {}` to allow any node" in str(caught.value)

    def test_unknown_top_level_field_lists_the_known_ones(self) -> None:
        with pytest.raises(SpecError) as caught:
            ResidencyPolicy.from_yaml(_policy_yaml() + "colour: red\n")
        assert caught.value.field == "colour"
        assert "known fields here: api_version, kind, default_field_action" in str(caught.value)

    def test_bad_tenant_name_is_refused(self) -> None:
        with pytest.raises(SpecError, match=r'tenants\["Bad Tenant"\]'):
            ResidencyPolicy.from_yaml(_policy_yaml() + "tenants:\n  Bad Tenant: {}\n")

    def test_bad_yaml_and_missing_file_are_spec_errors(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="not valid YAML"):
            ResidencyPolicy.from_yaml("classes: [")
        with pytest.raises(SpecError, match="no such policy file"):
            load_policy(tmp_path / "none.yaml")

    def test_load_policy_puts_the_file_in_front(self, tmp_path: Path) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(_policy_yaml(public="{field_action: shred}"), encoding="utf-8")
        with pytest.raises(SpecError) as caught:
            load_policy(path)
        assert str(caught.value).startswith(f"{path}: classes.public.field_action: ")


class TestDeployRefusesTrainingOutsideTheJurisdiction:
    """The issue's case: confidential LU data must not be trained on a node labelled DE."""

    def test_training_pinned_to_de_is_refused_naming_rule_label_and_node(
        self, policy: ResidencyPolicy
    ) -> None:
        spec = pipeline(retrain_where={JURISDICTION: "DE"})
        with pytest.raises(PlacementError) as caught:
            check_pipeline(policy, spec, NODES, compute_nodes=COMPUTE)
        error = caught.value
        assert error.rule == "confidential.jurisdiction"
        assert error.label == f"{JURISDICTION}=DE"
        assert str(error) == (
            "confidential data may only be processed in jurisdiction LU (rule "
            "confidential.jurisdiction); the training selector allows nodes labelled "
            f"{JURISDICTION}=DE (node cloud-de-1); retrain.where has {JURISDICTION}: DE "
            f"(fix: add `{JURISDICTION}: LU` to retrain.where); federated training would keep "
            "each site's data at its site, but no known node there may process it (fix: join a "
            f"node labelled {SITE}=lux-1, {JURISDICTION}=LU to the Ray cluster)"
        )

    def test_unconstrained_training_is_refused_when_a_de_node_is_known(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError) as caught:
            check_pipeline(policy, pipeline(), NODES, compute_nodes=COMPUTE)
        assert caught.value.rule == "confidential.jurisdiction"
        assert "(node cloud-de-1)" in str(caught.value)
        assert f"retrain.where does not constrain {JURISDICTION}" in str(caught.value)
        assert f"add `{JURISDICTION}: LU` to retrain.where" in str(caught.value)

    def test_pinned_to_de_is_refused_even_with_no_de_node_known(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError, match=f"allows nodes labelled {JURISDICTION}=DE "):
            check_pipeline(
                policy,
                pipeline(
                    edge_where={TIER: "edge", JURISDICTION: "LU"},
                    retrain_where={JURISDICTION: "DE"},
                ),
                None,
            )

    def test_unconstrained_training_is_refused_when_no_nodes_are_known(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError, match="no nodes are known"):
            check_pipeline(policy, pipeline(edge_where={TIER: "edge", JURISDICTION: "LU"}), None)

    def test_unconstrained_training_passes_when_every_known_node_is_in_lu_and_says_so(
        self, policy: ResidencyPolicy
    ) -> None:
        nodes = {"cam-lux-1": CAM_LUX_1, "cloud-lu-1": CLOUD_LU}
        decisions = check_pipeline(policy, pipeline(), nodes)
        training = next(d for d in decisions if d.stage == "training")
        assert training.allowed
        assert training.rule == "confidential.jurisdiction"
        assert "every known node it matches (2) satisfies the rule" in training.reason
        assert f"add `{JURISDICTION}: LU` to retrain.where" in training.reason

    def test_training_pinned_to_lu_passes(self, policy: ResidencyPolicy) -> None:
        decisions = check_pipeline(policy, pipeline(retrain_where={JURISDICTION: "LU"}), NODES)
        assert [d.stage for d in decisions] == ["edge", "uplink", "training", "rollout"]
        assert all(d.allowed for d in decisions)
        assert f"retrain.where pins {JURISDICTION} to LU" in decisions[2].reason

    def test_a_negated_expression_does_not_prove_anything(self, policy: ResidencyPolicy) -> None:
        with pytest.raises(PlacementError, match=r"node cloud-us-1\)"):
            check_pipeline(
                policy,
                pipeline(retrain_where={JURISDICTION: "!DE"}),
                {**NODES, "cloud-us-1": CLOUD_US},
                compute_nodes=[*COMPUTE, "cloud-us-1"],
            )

    def test_edge_stage_outside_lu_is_refused(self, policy: ResidencyPolicy) -> None:
        spec = pipeline(edge_where={TIER: "edge"}, retrain_where={JURISDICTION: "LU"})
        nodes = {**NODES, "cam-fra-1": {TIER: "edge", SITE: "fra-1", JURISDICTION: "DE"}}
        with pytest.raises(PlacementError) as caught:
            check_pipeline(policy, spec, nodes)
        assert "the edge stage selector allows nodes labelled" in str(caught.value)
        assert "(node cam-fra-1)" in str(caught.value)
        assert "to edge.where" in str(caught.value)

    def test_refusals_are_decisions_too_for_the_audit_log(self, policy: ResidencyPolicy) -> None:
        decisions = pipeline_decisions(policy, pipeline(), NODES)
        refused = [d for d in decisions if not d.allowed]
        assert [d.stage for d in refused] == ["training"]
        assert refused[0].to_record() == {
            "allowed": False,
            "rule": "confidential.jurisdiction",
            "reason": refused[0].reason,
            "stage": "training",
            "label": f"{JURISDICTION}=DE",
        }


class TestCheckPlacement:
    def test_storage_uses_the_storage_rule(self) -> None:
        split = ResidencyPolicy.from_yaml(
            _policy_yaml(
                confidential="{processing: {jurisdiction: [LU, BE]}, storage: {jurisdiction: LU}}"
            )
        )
        where = LabelSelector({JURISDICTION: "BE"})
        allowed = check_placement(split, "confidential", where, None, purpose="processing")
        assert allowed.rule == "confidential.processing.jurisdiction"
        with pytest.raises(PlacementError) as caught:
            check_placement(split, "confidential", where, None, purpose="storage")
        assert caught.value.rule == "confidential.storage.jurisdiction"

    def test_public_data_may_go_anywhere(self, policy: ResidencyPolicy) -> None:
        decision = check_placement(policy, "public", {}, None, purpose="processing")
        assert decision.allowed
        assert decision.rule == "public"

    def test_same_site_without_a_known_source_site_is_refused(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError) as caught:
            check_placement(policy, "restricted", {SITE: "lux-1"}, None, purpose="processing")
        assert caught.value.rule == "restricted.same_site"
        assert "not known" in str(caught.value)

    def test_same_site_allows_only_the_capture_site(self, policy: ResidencyPolicy) -> None:
        ok = check_placement(
            policy,
            "restricted",
            {SITE: "lux-1"},
            None,
            purpose="processing",
            source_sites=["lux-1"],
        )
        assert ok.rule == "restricted.same_site"
        with pytest.raises(PlacementError, match=f"allows nodes labelled {SITE}=lux-dc"):
            check_placement(
                policy,
                "restricted",
                {SITE: "lux-dc"},
                None,
                purpose="processing",
                source_sites=["lux-1"],
            )

    def test_node_without_the_label_is_outside_the_rule(self, policy: ResidencyPolicy) -> None:
        with pytest.raises(
            PlacementError, match=re.escape(f"nodes without a {JURISDICTION} label")
        ):
            check_placement(
                policy,
                "confidential",
                {TIER: "cloud"},
                {"bare": {TIER: "cloud"}},
                purpose="processing",
            )


class TestRoute:
    ENDPOINTS = {"central-de": CLOUD_DE, "cloud-lu": CLOUD_LU, "onsite-lux-1": CAM_LUX_1}

    @pytest.mark.parametrize(
        ("data_class", "served_at"),
        [
            ("public", "central-de"),
            ("internal", "central-de"),
            ("confidential", "cloud-lu"),
            ("restricted", "onsite-lux-1"),
        ],
    )
    def test_the_first_endpoint_the_rule_allows_serves(
        self, policy: ResidencyPolicy, data_class: str, served_at: str
    ) -> None:
        name, decision = route(policy, data_class, "lux-1", self.ENDPOINTS)
        assert name == served_at and decision.allowed

    def test_restricted_data_from_a_site_without_a_server_is_refused_naming_each_endpoint(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError) as refused:
            route(policy, "restricted", "lux-2", self.ENDPOINTS)
        message = str(refused.value)
        assert "site lux-2" in message and "restricted.same_site" in message
        assert all(name in message for name in self.ENDPOINTS)


class TestUplinkPlan:
    FIELDS = {"iban": "restricted", "name": "confidential", "amount": "internal"}

    def test_restricted_field_is_dropped_per_the_default_action(
        self, policy: ResidencyPolicy
    ) -> None:
        spec = pipeline(fields=self.FIELDS)
        plan = uplink_plan(policy, spec, CAM_LUX_1, CLOUD_LU)
        assert plan.sends
        assert plan.dropped == ("iban",)
        assert plan.hashed == ()
        sent = plan.apply({"iban": "LU28 0019", "name": "Ada", "amount": 12.5}, salt=SALT)
        assert sent == {"name": "Ada", "amount": 12.5}
        assert any("restricted.same_site" in d.rule for d in plan.decisions)

    def test_confidential_field_is_hashed_when_the_store_is_outside_lu(
        self, policy: ResidencyPolicy
    ) -> None:
        spec = pipeline(data_class="internal", fields=self.FIELDS)
        plan = uplink_plan(policy, spec, CAM_LUX_1, CLOUD_DE)
        assert (plan.dropped, plan.hashed) == (("iban",), ("name",))
        sent = plan.apply({"iban": "LU28 0019", "name": "Ada", "amount": 12.5}, salt=SALT)
        assert sent["name"] == hash_field("name", "Ada", salt=SALT)
        assert str(sent["name"]).startswith("hmac-sha256:")
        assert "Ada" not in str(sent)
        assert "iban" not in sent

    def test_restricted_field_keeps_the_sample_at_the_edge_for_acme(
        self, policy: ResidencyPolicy
    ) -> None:
        plan = uplink_plan(policy, pipeline(tenant="acme", fields=self.FIELDS), CAM_LUX_1, CLOUD_LU)
        assert plan.keep_at_edge
        assert not plan.sends
        assert plan.describe() == "samples stay on the edge"
        with pytest.raises(PlacementError):
            plan.apply({"amount": 1}, salt=SALT)

    def test_restricted_field_goes_up_to_a_store_on_its_own_site(
        self, policy: ResidencyPolicy
    ) -> None:
        site_store = {TIER: "edge", SITE: "lux-1", JURISDICTION: "LU", COUNTRY: "LU"}
        plan = uplink_plan(policy, pipeline(fields=self.FIELDS), CAM_LUX_1, site_store)
        assert (plan.keep_at_edge, plan.dropped, plan.hashed) == (False, (), ())

    def test_samples_whose_class_the_store_may_not_hold_stay_at_the_edge(
        self, policy: ResidencyPolicy
    ) -> None:
        plan = uplink_plan(policy, pipeline(), CAM_LUX_1, CLOUD_DE)
        assert plan.keep_at_edge
        assert plan.decisions[0].rule == "confidential.jurisdiction"
        assert not plan.decisions[0].allowed

    def test_each_field_decision_names_its_field_and_rule_as_attributes(
        self, policy: ResidencyPolicy
    ) -> None:
        spec = pipeline(data_class="internal", fields=self.FIELDS)
        plan = uplink_plan(policy, spec, CAM_LUX_1, CLOUD_DE)
        assert plan.decisions[0].field is None  # the samples as a whole
        assert [d.field for d in plan.decisions[1:]] == list(self.FIELDS)
        iban, name, amount = (plan.field_decision(f) for f in self.FIELDS)
        assert iban is not None and iban.rule == "restricted.same_site, restricted.field_action"
        assert name is not None
        assert name.rule == "confidential.jurisdiction, confidential.field_action"
        assert amount is not None and amount.rule == "internal.country"
        assert plan.field_decision("not_in_the_schema") is None

    def test_a_decision_is_built_by_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            Decision(True, "uplink", "sent unchanged")  # type: ignore[misc]
        made = Decision(allowed=True, rule="uplink", reason="sent unchanged", field="iban")
        assert (made.stage, made.field, made.label) == ("placement", "iban", None)

    def test_hash_is_stable_per_salt_and_differs_across_tenants(self) -> None:
        one = hash_field("iban", "LU28 0019", salt=SALT)
        assert one == hash_field("iban", b"LU28 0019", salt=SALT)
        assert one != hash_field("iban", "LU28 0019", salt=b"t" * 32)
        assert one != hash_field("name", "LU28 0019", salt=SALT)

    def test_short_salt_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="at least 16"):
            hash_field("iban", "x", salt=b"short")


class TestIngest:
    def test_confidential_from_lu_into_an_lu_store_is_allowed(
        self, policy: ResidencyPolicy
    ) -> None:
        decision = ingest_allows(policy, "confidential", CAM_LUX_1, CLOUD_LU)
        assert decision.allowed
        assert decision.stage == "ingest"
        assert decision.rule == "confidential.jurisdiction"

    def test_confidential_into_a_de_store_is_rejected_with_the_rule(
        self, policy: ResidencyPolicy
    ) -> None:
        decision = ingest_allows(policy, "confidential", CAM_LUX_1, CLOUD_DE)
        assert not decision.allowed
        assert decision.rule == "confidential.jurisdiction"
        assert decision.label == f"{JURISDICTION}=DE"
        assert "the store is labelled continuum.io/jurisdiction=DE" in decision.reason

    def test_restricted_only_into_a_store_on_the_capture_site(
        self, policy: ResidencyPolicy
    ) -> None:
        on_site = {TIER: "edge", SITE: "lux-1"}
        assert ingest_allows(policy, "restricted", CAM_LUX_1, on_site).allowed
        refused = ingest_allows(policy, "restricted", CAM_LUX_2, on_site)
        assert (refused.allowed, refused.rule) == (False, "restricted.same_site")

    def test_internal_stays_in_the_eu(self, policy: ResidencyPolicy) -> None:
        assert ingest_allows(policy, "internal", CAM_LUX_1, CLOUD_DE).allowed
        assert not ingest_allows(policy, "internal", CAM_LUX_1, CLOUD_US).allowed


class TestDerivedTrainingSelector:
    def test_policy_constraint_is_added_to_an_open_where(self, policy: ResidencyPolicy) -> None:
        derived = derive_training_selector(
            policy, pipeline(retrain_where={TIER: "cloud"}), [CAM_LUX_1]
        )
        assert derived.root == {TIER: "cloud", JURISDICTION: "LU"}
        assert derived.matches(CLOUD_LU)
        assert not derived.matches(CLOUD_DE)

    def test_user_list_is_narrowed_to_the_allowed_values(self, policy: ResidencyPolicy) -> None:
        derived = derive_training_selector(
            policy, pipeline(retrain_where={JURISDICTION: "in(DE,LU)"}), [CAM_LUX_1]
        )
        assert derived.root == {JURISDICTION: "LU"}

    def test_user_where_that_leaves_nothing_allowed_is_refused(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError) as caught:
            derive_training_selector(policy, pipeline(retrain_where={JURISDICTION: "DE"}), [])
        assert caught.value.rule == "confidential.jurisdiction"
        assert f"set `{JURISDICTION}: LU` in retrain.where" in str(caught.value)

    def test_restricted_training_is_pinned_to_the_capture_site(
        self, policy: ResidencyPolicy
    ) -> None:
        derived = derive_training_selector(policy, pipeline(data_class="restricted"), [CAM_LUX_1])
        assert derived.root == {SITE: "lux-1"}

    def test_restricted_data_from_two_sites_cannot_train_in_one_job(
        self, policy: ResidencyPolicy
    ) -> None:
        with pytest.raises(PlacementError, match="sites lux-1, lux-2") as caught:
            derive_training_selector(
                policy, pipeline(data_class="restricted"), [CAM_LUX_1, CAM_LUX_2]
            )
        assert caught.value.rule == "restricted.same_site"

    def test_fields_the_store_keeps_bound_training_too(self, policy: ResidencyPolicy) -> None:
        spec = pipeline(data_class="internal", fields={"name": "confidential"})
        assert (
            derive_training_selector(policy, spec, [CAM_LUX_1], store_labels=CLOUD_DE)
            .root[COUNTRY]
            .startswith("in(")
        )
        kept = derive_training_selector(policy, spec, [CAM_LUX_1], store_labels=CLOUD_LU)
        assert kept.root[JURISDICTION] == "LU"

    def test_public_where_is_left_as_the_user_wrote_it(self, policy: ResidencyPolicy) -> None:
        spec = pipeline(data_class="public", retrain_where={TIER: "hpc"})
        assert derive_training_selector(policy, spec, []).root == {TIER: "hpc"}


class TestExplain:
    def test_every_stage_says_where_data_may_go_and_by_which_rule(
        self, policy: ResidencyPolicy
    ) -> None:
        spec = pipeline(fields={"iban": "restricted"}, retrain_where={JURISDICTION: "LU"})
        lines = explain(policy, spec, NODES, store_labels=CLOUD_LU)
        stages = [line.partition(":")[0] for line in lines if not line.startswith(" ")]
        assert stages == [
            "pipeline payments-fraud (tenant bank, data class confidential)",
            "edge inference",
            "uplink",
            "ingest/store",
            "training",
            "rollout",
            "training plan",
        ]
        text = "\n".join(lines)
        assert "  fields: iban (restricted)" in text
        assert "restricted data (field iban) may not leave its capture site" in text
        assert "node cam-lux-1: send samples (drop iban)" in text
        assert "the training job runs with selector: continuum.io/jurisdiction=LU" in text

    def test_explain_shows_the_refusal_instead_of_raising(self, policy: ResidencyPolicy) -> None:
        lines = explain(policy, pipeline(), NODES)
        assert any(line.startswith("training: REFUSED: ") for line in lines)


@pytest.fixture
def with_policy_command(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register ``continuum policy`` until the lead adds it to ``SUBCOMMANDS``."""
    if policy_cli not in cli.SUBCOMMANDS:
        monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, policy_cli))
    yield


@pytest.mark.usefixtures("with_policy_command")
class TestPolicyCommand:
    def _files(self, tmp_path: Path, retrain_where: dict[str, str]) -> tuple[Path, Path]:
        spec = pipeline(retrain_where=retrain_where)
        pipe = tmp_path / "pipe.yaml"
        pipe.write_text(spec.to_yaml(), encoding="utf-8")
        nodes = tmp_path / "nodes.yaml"
        nodes.write_text(
            yaml.safe_dump({"nodes": NODES, "store": CLOUD_LU, "compute": COMPUTE}),
            encoding="utf-8",
        )
        return pipe, nodes

    def test_check_exits_refused_with_the_refusal(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipe, nodes = self._files(tmp_path, {JURISDICTION: "DE"})
        status = main(
            ["policy", "check", str(pipe), "--policy", str(EXAMPLE_POLICY), "--nodes", str(nodes)]
        )
        assert status == cli.EXIT_REFUSED == 3
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("refused: confidential data may only be processed")
        assert "(rule confidential.jurisdiction)" in captured.err

    def test_check_exits_zero_when_the_pipeline_keeps_to_the_policy(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipe, nodes = self._files(tmp_path, {JURISDICTION: "LU"})
        args = ["policy", "check", str(pipe), "--policy", str(EXAMPLE_POLICY)]
        assert main([*args, "--nodes", str(nodes)]) == 0
        assert capsys.readouterr().out.startswith("allowed: payments-fraud keeps to ")

    def test_explain_prints_each_stage_and_exits_zero(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipe, nodes = self._files(tmp_path, {})
        args = ["policy", "explain", str(pipe), "--policy", str(EXAMPLE_POLICY)]
        assert main([*args, "--nodes", str(nodes)]) == 0
        out = capsys.readouterr().out
        assert "\nedge inference: allowed: " in out
        assert "\ntraining: REFUSED: " in out
        assert "\nrollout: allowed: " in out

    def test_malformed_policy_exits_two_naming_the_field(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipe, _ = self._files(tmp_path, {})
        bad = tmp_path / "bad.yaml"
        bad.write_text(_policy_yaml(confidential="{jurisdication: [LU]}"), encoding="utf-8")
        assert main(["policy", "check", str(pipe), "--policy", str(bad)]) == 2
        assert capsys.readouterr().err.startswith(
            f"error: {bad}: classes.confidential.jurisdication: "
        )

    def test_malformed_nodes_file_exits_two_naming_the_node(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipe, _ = self._files(tmp_path, {})
        nodes = tmp_path / "nodes.yaml"
        nodes.write_text("nodes:\n  cam-1: {tier: edge}\n", encoding="utf-8")
        args = ["policy", "explain", str(pipe), "--policy", str(EXAMPLE_POLICY)]
        assert main([*args, "--nodes", str(nodes)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: {nodes}: nodes["cam-1"]["tier"]: ')
        assert 'use "continuum.io/tier"' in err

    def test_policy_without_a_command_prints_usage_and_exits_two(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["policy"]) == 2
        assert "explain" in capsys.readouterr().err


def _policy_yaml(**classes: str) -> str:
    rules = {
        "public": "{}",
        "internal": "{country: [LU, DE, BE]}",
        "confidential": "{jurisdiction: [LU]}",
        "restricted": "{same_site: true}",
    } | classes
    return "classes:\n" + "".join(f"  {name}: {rule}\n" for name, rule in rules.items())
