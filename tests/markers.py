"""Markers from what a test needs, so the fast tests run alone:

    pytest -m "not postfix and not postgres and not browser and not slow"

tests/conftest.py applies them at collection (:func:`markers_for`).
"""

from __future__ import annotations

import pytest

# What a test needs, from the fixtures it uses (and a store parametrized
# over PostgreSQL). Tests that start a private Postfix some other way say so
# themselves (@pytest.mark.postfix).
MARKERS_OF_FIXTURE: dict[str, tuple[str, ...]] = {
    "postfix": ("postfix",),
    "postgres": ("postgres",),
    "postgres_server": ("postgres",),
    "cluster": ("postfix", "postgres"),  # tests/test_multinode.py: nodes on one PostgreSQL
    "browser": ("browser",),
}

# Tests that take seconds by themselves (half a second and more on a busy
# 2-core machine, `pytest --durations=0`): they start `gateway` commands as
# processes, train models, wait out DNS timeouts on purpose or walk a
# generated corpus. Marked slow here, by module and name (or name[params]),
# beside those that carry @pytest.mark.slow themselves.
SLOW_TESTS: dict[str, frozenset[str]] = {
    "test_attachments.py": frozenset({
        "test_broken_and_random_archives_never_make_the_check_fail",
    }),
    "test_auth.py": frozenset({
        "test_broken_dns_gives_temperrors_within_the_budget",
        "test_one_slow_sender_domain_does_not_make_other_mail_wait",
    }),
    "test_auth_hostile.py": frozenset({
        "test_linear_body_is_installed_when_a_check_is_built_not_on_import",
        "test_linear_relaxed_body_is_dkimpys_byte_for_byte",
        "test_linear_relaxed_body_is_dkimpys_on_any_bytes",
    }),
    "test_classifier.py": frozenset({
        "test_a_blocks_model_scores_as_it_was_trained_and_old_models_still_load",
        "test_check_uses_the_store_and_reloads_a_promotion",
        "test_evaluate_can_cross_validate_the_procedure",
        "test_evaluate_json_has_the_promised_fields",
        "test_hyperparameters_are_chosen_inside_each_training_fold",
        "test_promotion_refuses_a_model_that_holds_more_good_mail",
        "test_train_into_the_store_then_promote_and_roll_back",
        "test_training_is_deterministic_for_a_seed",
    }),
    "test_cli.py": frozenset({
        "test_bad_config_is_one_line_per_problem_without_traceback",
        "test_check_envelope_flags_reach_the_checks",
        "test_check_json_carries_the_spam_probability",
        "test_check_reports_a_missing_file_in_one_line_and_goes_on",
        "test_check_walks_directories_one_line_per_message",
        "test_config_check_accepts_a_working_setup",
        "test_config_check_says_when_clamd_is_missing",
        "test_run_with_an_unusable_socket_says_so",
    }),
    "test_demo.py": frozenset({
        "test_a_killed_gateway_leaves_no_workers_either",
        "test_stopping_the_milter_ends_every_process_it_started",
    }),
    "test_dns.py": frozenset({
        "test_a_dead_server_is_skipped_after_timeouts_on_several_names",
        "test_a_failure_is_remembered_for_its_name",
        "test_a_live_server_slow_on_many_names_is_never_skipped",
        "test_a_name_that_cannot_exist_is_permanent_and_never_asked",
        "test_a_server_answering_in_between_is_not_counted_down",
        "test_one_slow_name_does_not_fail_other_names",
    }),
    "test_dnsbl.py": frozenset({
        "test_a_dead_list_server_is_a_temperror_not_a_listing",
        "test_each_return_code_scores_as_configured",
        "test_every_lookup_survives_the_hostile_corpus",
    }),
    "test_doctor.py": frozenset({
        "test_config_check_reports_every_problem_at_once",
        "test_doctor_on_a_healthy_setup_is_all_ticks",
        "test_doctor_sees_a_missing_release_listener_and_a_wide_store",
        "test_doctor_stops_at_a_broken_config",
        "test_doctor_text_is_one_line_per_check_with_marks",
        "test_doctor_with_a_wrong_postfix_setting",
        "test_doctor_with_clamd_stopped",
        "test_doctor_with_dns_dead",
        "test_symbols_of_checks_that_are_off_are_not_unknown",
    }),
    "test_file_modes.py": frozenset({
        "test_the_milter_socket_is_for_postfix_and_the_store_for_the_gateway",
    }),
    "test_hostile.py": frozenset({
        "test_address_parsers_never_raise",
        "test_generated_messages",
        "test_header_fields_parse_bounded",
        "test_hostile_message[text_huge]",
        "test_mime_trees_parse_bounded_and_tokenize",
        "test_seeded_generated_messages",
    }),
    "test_install.py": frozenset({
        "test_a_command_that_needs_a_missing_extra_says_which",
        "test_init_prepares_the_machine",
        "test_scoring_needs_none_of_the_extras",
    }),
    "test_jobs.py": frozenset({
        "test_a_periodic_job_runs_at_the_period_start",
        "test_gateway_nodes_lists_the_fleet_and_fails_on_a_stale_node",
        "test_the_dashboard_lists_the_nodes_and_marks_a_stale_one",
    }),
    "test_learn.py": frozenset({
        "test_gateway_learn_files_and_quarantine_then_train_with_feedback",
        "test_learn_errors_are_one_line",
        "test_train_needs_mail",
    }),
    "test_lists.py": frozenset({
        "test_an_entry_added_applies_to_the_next_message_without_a_restart",
        "test_an_expired_entry_stops_applying_as_it_expires",
        "test_gateway_list_add_show_remove_expire",
        "test_gateway_list_needs_the_store",
        "test_gateway_list_problems_are_one_line",
        "test_hits_are_counted_for_mail_the_mta_passed",
    }),
    "test_model_store.py": frozenset({
        "test_a_folder_store_moves_into_the_database",
        "test_model_commands_work_on_a_database_store",
        "test_the_bayes_check_loads_and_reloads_from_a_database_store",
        "test_the_cache_keeps_the_newest_models_and_the_one_in_use",
        "test_train_writes_its_candidate_into_a_database_store",
        "test_versions_pointer_history_and_rollback_in_the_database",
    }),
    "test_release.py": frozenset({
        "test_cli_bulk_prefix_ids_and_the_history_key",
        "test_rules_can_reserve_a_symbol_for_admins",
    }),
    "test_replay.py": frozenset({
        "test_a_lower_threshold_lists_exactly_the_messages_that_cross_it",
        "test_a_new_score_names_the_symbol_that_moved_each_message",
        "test_a_proposed_model_is_scored_by_its_own_pipeline",
        "test_off_by_default_and_a_fraction_keeps_some",
        "test_proposed_rules_are_validated_like_the_running_ones",
        "test_replay_can_look_at_one_kind_and_a_time_window",
    }),
    "test_rules.py": frozenset({
        "test_every_rule_kind_survives_the_hostile_corpus",
    }),
    "test_scan.py": frozenset({
        "test_a_failing_scanner_answers_tempfail",
        "test_checkv2_carries_the_envelope",
        "test_fifty_clients_at_once_and_nothing_leaks",
        "test_only_allowed_addresses_and_the_secret",
        "test_spamc_gets_the_verdict_gateway_check_gives",
        "test_spamc_ping",
        "test_truncated_requests_are_dropped_and_the_server_keeps_serving",
    }),
    "test_terminal.py": frozenset({
        "test_list_into_a_closed_pipe_has_no_traceback",
    }),
    "test_trace.py": frozenset({
        "test_trace_by_message_id_finds_the_queue_id_in_the_store",
        "test_trace_by_queue_id_shows_verdict_symbols_timings_and_release",
        "test_trace_of_nothing_says_where_it_looked",
        "test_trace_reads_pure_json_lines_without_a_store",
    }),
    "test_vectors_spf.py": frozenset({
        "test_openspf_scenario_through_one_resolver[rfc4408:Record lookup]",
        "test_openspf_scenario_through_one_resolver[rfc7208:Record lookup]",
        "test_openspf_vector[rfc4408:alltimeout]",
        "test_openspf_vector[rfc4408:exists-dnserr]",
        "test_openspf_vector[rfc4408:exp-dns-error]",
        "test_openspf_vector[rfc4408:include-temperror]",
        "test_openspf_vector[rfc4408:nospftxttimeout]",
        "test_openspf_vector[rfc4408:txttimeout]",
        "test_openspf_vector[rfc7208:alltimeout]",
        "test_openspf_vector[rfc7208:exists-dnserr]",
        "test_openspf_vector[rfc7208:exp-dns-error]",
        "test_openspf_vector[rfc7208:include-temperror]",
        "test_openspf_vector[rfc7208:nospftxttimeout]",
        "test_openspf_vector[rfc7208:null-text]",
        "test_openspf_vector[rfc7208:txttimeout]",
        "test_pyspf_looks_up_through_the_gateway_once_a_check_is_built_not_on_import",
    }),
    "test_web.py": frozenset({
        "test_a_failure_is_a_plain_error_page",
        "test_a_recipient_reports_spam_into_the_queue",
        "test_an_analyst_cannot_reach_admin_pages_or_release_a_virus",
        "test_bulk_actions_and_the_audit_trail_name_the_user",
        "test_digest_links_release_to_their_recipient_only_and_once",
        "test_every_page_but_login_needs_a_session",
        "test_gateway_web_serves_and_stops",
        "test_hostile_mail_is_escaped_sanitized_and_never_rendered_in_the_page",
        "test_login_is_rate_limited_and_audited",
        "test_made_up_and_foreign_ids_are_404_never_a_traceback",
        "test_session_cookie_flags_and_secure_behind_tls",
        "test_state_changes_need_the_csrf_token",
        "test_user_and_feedback_commands",
        "test_users_passwords_and_the_login_limit",
    }),
    "test_workers.py": frozenset({
        "test_a_check_stuck_in_c_code_is_stopped_and_the_message_decided",
        "test_a_message_that_finds_no_worker_in_time_is_a_temporary_failure",
        "test_slow_messages_do_not_hold_up_the_others",
        "test_workers_give_the_verdict_the_milter_process_gives",
    }),
}


def markers_for(item: pytest.Item) -> set[str]:
    """The markers a collected test gets for what it needs."""
    needs: set[str] = set()
    slow = SLOW_TESTS.get(item.path.name, frozenset())
    if item.name in slow or getattr(item, "originalname", None) in slow:
        needs.add("slow")
    for fixture in getattr(item, "fixturenames", ()):
        needs.update(MARKERS_OF_FIXTURE.get(fixture, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgresql" in callspec.params.values():
        needs.add("postgres")
    return needs
