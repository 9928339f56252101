-- Billing: catalog, customers, payment methods, subscriptions, invoices,
-- payments, usage, the double-entry ledger, idempotency keys and the job
-- table that drives renewals and dunning. docs/services/billing.md is the
-- design this schema implements.
--
-- Rules every table follows:
-- * Money is `bigint` in the currency's minor unit next to a `currency_code`;
--   never numeric, never float. JPY and CLP amounts are whole yen/pesos.
-- * Business times (periods, run_at, posted_at, created_at, …) are written
--   by the service from its Clock, never defaulted to now(), so tests can
--   move time and every instance agrees on the boundary being processed.
-- * Financial history is immutable: triggers refuse UPDATE/DELETE where a
--   change would rewrite it (ledger, finalized invoices and their lines,
--   settled payment attempts, billed usage, prices).

-- ISO 4217 alpha-3, upper case.
CREATE DOMAIN currency_code AS char(3) CHECK (VALUE ~ '^[A-Z]{3}$');

-- Currencies the service accepts, with their ISO 4217 exponent (minor
-- units per major unit = 10^exponent). The exponent is used only to format
-- amounts for people (`*_display` in events) and to validate config: all
-- arithmetic is already in minor units, so JPY/CLP (exponent 0) need no
-- special case anywhere else.
CREATE TABLE currencies (
    code      currency_code PRIMARY KEY,
    exponent  smallint      NOT NULL CHECK (exponent BETWEEN 0 AND 4),
    name      text          NOT NULL
);
INSERT INTO currencies (code, exponent, name) VALUES
    ('USD', 2, 'US dollar'),
    ('EUR', 2, 'Euro'),
    ('GBP', 2, 'Pound sterling'),
    ('JPY', 0, 'Yen'),
    ('CLP', 0, 'Chilean peso'),
    ('KRW', 0, 'Won'),
    ('BHD', 3, 'Bahraini dinar');

-- ---------------------------------------------------------------- catalog

-- Products customers subscribe to. Managed by migrations (seeded below),
-- read through the cache by ListPlans/GetPlan.
CREATE TABLE plans (
    id           uuid        PRIMARY KEY,
    code         text        NOT NULL UNIQUE CHECK (code ~ '^[a-z][a-z0-9_]{0,62}$'),
    name         text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    active       boolean     NOT NULL DEFAULT true,
    sort_order   integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL
);

-- A plan's prices: a flat amount billed in advance per period plus an
-- optional metered component billed in arrears
-- (ceil(quantity / usage_package_size) × usage_unit_amount_minor).
-- Immutable but for `active`: existing subscriptions and invoice lines
-- point at a price and must keep meaning what they meant; a new price
-- replaces an old one.
CREATE TABLE prices (
    id                       uuid          PRIMARY KEY,
    plan_id                  uuid          NOT NULL REFERENCES plans (id),
    lookup_key               text          NOT NULL UNIQUE CHECK (lookup_key ~ '^[a-z][a-z0-9_]{0,62}$'),
    currency                 currency_code NOT NULL REFERENCES currencies (code),
    unit_amount_minor        bigint        NOT NULL CHECK (unit_amount_minor BETWEEN 0 AND 99999999999),
    billing_interval         text          NOT NULL CHECK (billing_interval IN ('month', 'year')),
    interval_count           integer       NOT NULL DEFAULT 1 CHECK (interval_count BETWEEN 1 AND 12),
    -- NULL: `billing.trial_days` from config.
    trial_days               integer       CHECK (trial_days BETWEEN 0 AND 730),
    meter                    text          CHECK (meter ~ '^[a-z][a-z0-9_]{0,62}$'),
    usage_unit_amount_minor  bigint        CHECK (usage_unit_amount_minor BETWEEN 0 AND 99999999999),
    usage_package_size       bigint        CHECK (usage_package_size BETWEEN 1 AND 1000000000),
    active                   boolean       NOT NULL DEFAULT true,
    created_at               timestamptz   NOT NULL,
    CHECK ((meter IS NULL) = (usage_unit_amount_minor IS NULL)
       AND (meter IS NULL) = (usage_package_size IS NULL))
);
CREATE INDEX prices_plan ON prices (plan_id);
CREATE INDEX prices_currency ON prices (currency) WHERE active;

CREATE FUNCTION prices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'prices are never deleted (deactivate price %)', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.plan_id, NEW.lookup_key, NEW.currency, NEW.unit_amount_minor,
        NEW.billing_interval, NEW.interval_count, NEW.trial_days, NEW.meter,
        NEW.usage_unit_amount_minor, NEW.usage_package_size, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.plan_id, OLD.lookup_key, OLD.currency, OLD.unit_amount_minor,
        OLD.billing_interval, OLD.interval_count, OLD.trial_days, OLD.meter,
        OLD.usage_unit_amount_minor, OLD.usage_package_size, OLD.created_at) THEN
        RAISE EXCEPTION 'price % is immutable; add a new price instead', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER prices_immutable BEFORE UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION prices_immutable();

-- Demo catalog. Fixed ids so tests and docs can name them; amounts in
-- minor units (USD cents; JPY and CLP have none).
INSERT INTO plans (id, code, name, description, sort_order, created_at) VALUES
    ('10000000-0000-4000-8000-000000000001', 'free',     'Free',     'For trying things out.',               1, '2026-01-01T00:00:00Z'),
    ('10000000-0000-4000-8000-000000000002', 'pro',      'Pro',      'For small teams.',                     2, '2026-01-01T00:00:00Z'),
    ('10000000-0000-4000-8000-000000000003', 'business', 'Business', 'For companies.',                       3, '2026-01-01T00:00:00Z'),
    ('10000000-0000-4000-8000-000000000004', 'api',      'API',      'Pay as you go: 1,000 API calls $0.50.', 4, '2026-01-01T00:00:00Z');

INSERT INTO prices (id, plan_id, lookup_key, currency, unit_amount_minor, billing_interval,
                    trial_days, meter, usage_unit_amount_minor, usage_package_size, created_at) VALUES
    -- $0/month: never invoiced (zero invoices are not issued), periods still roll.
    ('20000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001', 'free_monthly_usd',     'USD',     0, 'month', 0,    NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    -- $20.00/month, trial = billing.trial_days (14).
    ('20000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000002', 'pro_monthly_usd',      'USD',  2000, 'month', NULL, NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    -- $200.00/year: cheaper per month, so yearly → monthly is a downgrade.
    ('20000000-0000-4000-8000-000000000003', '10000000-0000-4000-8000-000000000002', 'pro_yearly_usd',       'USD', 20000, 'year',  NULL, NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    ('20000000-0000-4000-8000-000000000004', '10000000-0000-4000-8000-000000000003', 'business_monthly_usd', 'USD',  5000, 'month', 0,    NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    ('20000000-0000-4000-8000-000000000005', '10000000-0000-4000-8000-000000000003', 'business_yearly_usd',  'USD', 50000, 'year',  0,    NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    -- ¥1,490/month and ¥4,980/month: zero-decimal proration.
    ('20000000-0000-4000-8000-000000000006', '10000000-0000-4000-8000-000000000002', 'pro_monthly_jpy',      'JPY',  1490, 'month', NULL, NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    ('20000000-0000-4000-8000-000000000007', '10000000-0000-4000-8000-000000000003', 'business_monthly_jpy', 'JPY',  4980, 'month', 0,    NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    -- CLP 9,990/month and CLP 24,990/month: zero-decimal, the Kill Bill bug class.
    ('20000000-0000-4000-8000-000000000008', '10000000-0000-4000-8000-000000000002', 'pro_monthly_clp',      'CLP',  9990, 'month', NULL, NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    ('20000000-0000-4000-8000-000000000009', '10000000-0000-4000-8000-000000000003', 'business_monthly_clp', 'CLP', 24990, 'month', 0,    NULL,       NULL, NULL, '2026-01-01T00:00:00Z'),
    -- Metered: $0 base + $0.50 per started 1,000 api_calls, billed in arrears.
    ('20000000-0000-4000-8000-000000000010', '10000000-0000-4000-8000-000000000004', 'api_monthly_usd',      'USD',     0, 'month', 0,    'api_calls',  50, 1000, '2026-01-01T00:00:00Z');

-- -------------------------------------------------------------- customers

-- One billing customer per auth user (created from `auth.user.signed_up`,
-- or by the user's first mutating call if that event is late: both paths
-- are `INSERT … ON CONFLICT (user_id) DO NOTHING`, and only the inserter
-- publishes `billing.customer.created`). `currency` is fixed by the first
-- subscription: credit balances and receivables stay single-currency per
-- customer, as in Stripe.
CREATE TABLE customers (
    id                         uuid          PRIMARY KEY,
    user_id                    uuid          NOT NULL UNIQUE,
    email                      text          NOT NULL DEFAULT '',
    currency                   currency_code REFERENCES currencies (code),
    -- 8 characters of Crockford base32; invoice numbers are
    -- `<prefix>-<n>`, so the prefix makes them unique across customers.
    invoice_prefix             text          NOT NULL UNIQUE CHECK (invoice_prefix ~ '^[0-9A-HJKMNP-TV-Z]{8}$'),
    default_payment_method_id  uuid,
    created_at                 timestamptz   NOT NULL,
    updated_at                 timestamptz   NOT NULL
);

-- Per-customer invoice number counter, in its own row so that numbering
-- locks only that customer's counter (`UPDATE … SET last_number =
-- last_number + 1 … RETURNING last_number` inside the finalizing
-- transaction) and never contends with other customers or with updates of
-- the customer row. Gapless: a rolled-back finalization rolls the number
-- back too.
CREATE TABLE invoice_number_counters (
    customer_id  uuid   PRIMARY KEY REFERENCES customers (id),
    last_number  bigint NOT NULL DEFAULT 0 CHECK (last_number >= 0)
);

CREATE FUNCTION customers_counter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO invoice_number_counters (customer_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER customers_counter AFTER INSERT ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_counter();

-- Cards attached through the provider. Only the provider's reference and
-- display details are kept; card numbers never reach tenx.
CREATE TABLE payment_methods (
    id            uuid        PRIMARY KEY,
    customer_id   uuid        NOT NULL REFERENCES customers (id),
    provider      text        NOT NULL,
    provider_ref  text        NOT NULL,
    brand         text        NOT NULL CHECK (brand IN ('visa', 'mastercard', 'amex', 'other')),
    last4         char(4)     NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month     smallint    NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      smallint    NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    created_at    timestamptz NOT NULL,
    detached_at   timestamptz,
    UNIQUE (provider, provider_ref),
    -- Target of the (id, customer_id) foreign keys below: a default
    -- payment method is always the same customer's.
    UNIQUE (id, customer_id)
);
CREATE INDEX payment_methods_customer ON payment_methods (customer_id, created_at DESC);

ALTER TABLE customers ADD CONSTRAINT customers_default_payment_method
    FOREIGN KEY (default_payment_method_id, id) REFERENCES payment_methods (id, customer_id);

-- ---------------------------------------------------------- subscriptions

-- A customer's subscription to one price. The row is the state machine
-- (docs/services/billing.md); writers lock it `FOR UPDATE`, which also
-- serialises them against RecordUsage (whose foreign key takes
-- `FOR KEY SHARE` on it), so an invoice never misses usage committed
-- before it. `version` grows with every update (trigger) and travels in
-- events so consumers can drop stale states.
CREATE TABLE subscriptions (
    id                         uuid          PRIMARY KEY,
    customer_id                uuid          NOT NULL REFERENCES customers (id),
    price_id                   uuid          NOT NULL REFERENCES prices (id),
    currency                   currency_code NOT NULL REFERENCES currencies (code),
    status                     text          NOT NULL CHECK (status IN
                                   ('trialing', 'active', 'past_due', 'canceled', 'unpaid', 'incomplete')),
    -- Period k is [anchor + k intervals, anchor + (k+1) intervals), computed
    -- from the anchor (UTC calendar, clamped to month end), never chained,
    -- so Jan 31 → Feb 28 → Mar 31. cycle_index -1 is the trial
    -- [trial_start, trial_end = anchor).
    billing_cycle_anchor       timestamptz   NOT NULL,
    cycle_index                integer       NOT NULL CHECK (cycle_index >= -1),
    current_period_start       timestamptz   NOT NULL,
    current_period_end         timestamptz   NOT NULL,
    trial_start                timestamptz,
    trial_end                  timestamptz,
    cancel_at_period_end       boolean       NOT NULL DEFAULT false,
    canceled_at                timestamptz,
    ended_at                   timestamptz,
    cancellation_reason        text          CHECK (cancellation_reason IN
                                   ('requested', 'payment_failed', 'incomplete_expired')),
    -- A downgrade (or any PERIOD_END change) waiting for current_period_end.
    pending_price_id           uuid          REFERENCES prices (id),
    pending_change_at          timestamptz,
    default_payment_method_id  uuid,
    latest_invoice_id          uuid,
    version                    bigint        NOT NULL DEFAULT 1,
    created_at                 timestamptz   NOT NULL,
    updated_at                 timestamptz   NOT NULL,
    CHECK (current_period_end > current_period_start),
    CHECK ((trial_start IS NULL) = (trial_end IS NULL)),
    CHECK (status <> 'trialing' OR cycle_index = -1),
    CHECK (cycle_index >= 0 OR trial_end IS NOT NULL),
    CHECK ((pending_price_id IS NULL) = (pending_change_at IS NULL)),
    CHECK ((status = 'canceled') = (ended_at IS NOT NULL)),
    CHECK ((status = 'canceled') = (cancellation_reason IS NOT NULL)),
    CHECK (NOT cancel_at_period_end OR canceled_at IS NOT NULL),
    FOREIGN KEY (default_payment_method_id, customer_id) REFERENCES payment_methods (id, customer_id)
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id, created_at DESC, id DESC);

-- The allowed transitions (and only those), and the version bump.
CREATE FUNCTION subscriptions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'subscriptions are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'trialing'   AND NEW.status IN ('active', 'canceled'))
        OR (OLD.status = 'active'     AND NEW.status IN ('past_due', 'canceled'))
        OR (OLD.status = 'past_due'   AND NEW.status IN ('active', 'unpaid', 'canceled'))
        OR (OLD.status = 'unpaid'     AND NEW.status IN ('active', 'canceled'))
        OR (OLD.status = 'incomplete' AND NEW.status IN ('active', 'canceled'))
    ) THEN
        RAISE EXCEPTION 'subscription %: % → % is not a valid transition', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status = 'canceled' AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'subscription % is canceled and cannot change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER subscriptions_guard BEFORE UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION subscriptions_guard();

-- --------------------------------------------------------------- invoices

-- Bills. Built as `draft` and finalized (numbered, `open` or `paid`) in the
-- same transaction as their lines, the usage they claim, their ledger
-- transaction and their outbox event: a draft never commits (deferred
-- trigger below), so an invoice is never "stuck generating". From
-- finalization on, number, amounts and lines are frozen; only the
-- settlement columns move, along the allowed status transitions.
-- amount_due = total − credit_applied + credit_added, never negative.
CREATE TABLE invoices (
    id                        uuid          PRIMARY KEY,
    customer_id               uuid          NOT NULL REFERENCES customers (id),
    subscription_id           uuid          REFERENCES subscriptions (id),
    number_seq                bigint        CHECK (number_seq >= 1),
    number                    text          UNIQUE,
    status                    text          NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    billing_reason            text          NOT NULL CHECK (billing_reason IN
                                  ('subscription_create', 'subscription_cycle', 'subscription_update', 'subscription_cancel')),
    currency                  currency_code NOT NULL REFERENCES currencies (code),
    total_minor               bigint        NOT NULL DEFAULT 0,
    credit_applied_minor      bigint        NOT NULL DEFAULT 0 CHECK (credit_applied_minor >= 0),
    credit_added_minor        bigint        NOT NULL DEFAULT 0 CHECK (credit_added_minor >= 0),
    amount_due_minor          bigint        NOT NULL DEFAULT 0 CHECK (amount_due_minor >= 0),
    amount_paid_minor         bigint        NOT NULL DEFAULT 0 CHECK (amount_paid_minor >= 0),
    -- The billing period it is for; `period_end` of a renewal is also the
    -- usage cut-off (unbilled usage with occurred_at < cut-off is claimed).
    period_start              timestamptz   NOT NULL,
    period_end                timestamptz   NOT NULL,
    created_at                timestamptz   NOT NULL,
    finalized_at              timestamptz,
    paid_at                   timestamptz,
    voided_at                 timestamptz,
    marked_uncollectible_at   timestamptz,
    attempt_count             integer       NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    next_payment_attempt_at   timestamptz,
    updated_at                timestamptz   NOT NULL,
    UNIQUE (customer_id, number_seq),
    CHECK (period_end >= period_start),
    CHECK (amount_due_minor = total_minor - credit_applied_minor + credit_added_minor),
    CHECK (credit_applied_minor = 0 OR credit_added_minor = 0),
    CHECK (amount_paid_minor <= amount_due_minor),
    CHECK ((status = 'draft') = (number IS NULL)),
    CHECK ((number IS NULL) = (number_seq IS NULL)),
    CHECK ((status = 'draft') = (finalized_at IS NULL)),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CHECK (status <> 'paid' OR amount_paid_minor = amount_due_minor),
    CHECK ((status = 'void') = (voided_at IS NOT NULL)),
    CHECK (status <> 'uncollectible' OR marked_uncollectible_at IS NOT NULL)
);
CREATE INDEX invoices_customer ON invoices (customer_id, created_at DESC, id DESC);
CREATE INDEX invoices_subscription ON invoices (subscription_id, created_at DESC, id DESC);
-- "Does this subscription still owe anything?" (past_due → active).
CREATE INDEX invoices_subscription_open ON invoices (subscription_id) WHERE status IN ('open', 'uncollectible');
-- A boundary is billed once even if its job ran twice.
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (subscription_id, period_start)
    WHERE billing_reason IN ('subscription_create', 'subscription_cycle');

ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_latest_invoice
    FOREIGN KEY (latest_invoice_id) REFERENCES invoices (id);

CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoices are never deleted (void invoice % instead)', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status = 'draft' THEN
        IF NEW.status NOT IN ('draft', 'open', 'paid') THEN
            RAISE EXCEPTION 'invoice %: draft → % is not a valid transition', OLD.id, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.status IN ('paid', 'void') AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'invoice % is % and cannot change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.id, NEW.customer_id, NEW.subscription_id, NEW.number_seq, NEW.number, NEW.billing_reason,
        NEW.currency, NEW.total_minor, NEW.credit_applied_minor, NEW.credit_added_minor,
        NEW.amount_due_minor, NEW.period_start, NEW.period_end, NEW.created_at, NEW.finalized_at)
       IS DISTINCT FROM
       (OLD.id, OLD.customer_id, OLD.subscription_id, OLD.number_seq, OLD.number, OLD.billing_reason,
        OLD.currency, OLD.total_minor, OLD.credit_applied_minor, OLD.credit_added_minor,
        OLD.amount_due_minor, OLD.period_start, OLD.period_end, OLD.created_at, OLD.finalized_at) THEN
        RAISE EXCEPTION 'invoice % is finalized: number, amounts and period are immutable', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'open'          AND NEW.status IN ('paid', 'void', 'uncollectible'))
        OR (OLD.status = 'uncollectible' AND NEW.status IN ('paid', 'void'))
    ) THEN
        RAISE EXCEPTION 'invoice %: % → % is not a valid transition', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();

-- Lines of an invoice. Written only while the invoice is a draft, i.e.
-- inside the transaction that finalizes it; never updated or deleted after.
CREATE TABLE invoice_lines (
    id                 uuid        PRIMARY KEY,
    invoice_id         uuid        NOT NULL REFERENCES invoices (id),
    line_no            smallint    NOT NULL CHECK (line_no >= 1),
    kind               text        NOT NULL CHECK (kind IN ('subscription', 'proration', 'usage')),
    description        text        NOT NULL,
    price_id           uuid        NOT NULL REFERENCES prices (id),
    -- subscription/proration: 1; usage: the exact sum of the claimed records.
    quantity           bigint      NOT NULL,
    unit_amount_minor  bigint      NOT NULL CHECK (unit_amount_minor >= 0),
    -- Signed; only proration credits are negative.
    amount_minor       bigint      NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    UNIQUE (invoice_id, line_no),
    CHECK (period_end >= period_start),
    CHECK (kind = 'proration' OR amount_minor >= 0),
    CHECK (CASE WHEN kind = 'usage' THEN quantity >= 1 ELSE quantity = 1 END)
);

CREATE FUNCTION invoice_lines_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent_status text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoice lines are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.invoice_id IS DISTINCT FROM OLD.invoice_id THEN
        RAISE EXCEPTION 'an invoice line cannot move to another invoice' USING ERRCODE = 'check_violation';
    END IF;
    SELECT status INTO parent_status FROM invoices WHERE id = NEW.invoice_id;
    IF parent_status IS DISTINCT FROM 'draft' THEN
        RAISE EXCEPTION 'invoice % is finalized: its lines are immutable', NEW.invoice_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_lines_immutable BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_lines_immutable();

-- At commit: no invoice is left a draft, and a finalized invoice's total
-- is exactly the sum of its lines.
CREATE FUNCTION invoices_check_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inv invoices%ROWTYPE;
    lines_total bigint;
BEGIN
    SELECT * INTO inv FROM invoices WHERE id = NEW.id;
    IF inv.status = 'draft' THEN
        RAISE EXCEPTION 'invoice % would be committed as a draft', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(amount_minor), 0) INTO lines_total FROM invoice_lines WHERE invoice_id = NEW.id;
    IF lines_total <> inv.total_minor THEN
        RAISE EXCEPTION 'invoice %: total % ≠ sum of lines %', NEW.id, inv.total_minor, lines_total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER invoices_check_at_commit AFTER INSERT ON invoices
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION invoices_check_at_commit();

-- --------------------------------------------------------------- payments

-- Every try to collect an invoice; a succeeded attempt is the payment.
-- The row is committed as `pending` *before* the provider is called and
-- its id is the provider's idempotency key, so a crash or timeout can be
-- resolved by asking the provider, never by charging again. The partial
-- unique indexes make double charging impossible in the database itself:
-- one attempt in flight per invoice, one success per invoice.
CREATE TABLE payment_attempts (
    id                  uuid          PRIMARY KEY,
    invoice_id          uuid          NOT NULL REFERENCES invoices (id),
    customer_id         uuid          NOT NULL REFERENCES customers (id),
    payment_method_id   uuid          REFERENCES payment_methods (id),
    amount_minor        bigint        NOT NULL CHECK (amount_minor > 0),
    currency            currency_code NOT NULL REFERENCES currencies (code),
    status              text          NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code        text          CHECK (failure_code IN ('card_declined', 'insufficient_funds',
                            'provider_error', 'no_payment_method', 'not_found_at_provider')),
    failure_message     text          NOT NULL DEFAULT '',
    initiated_by        text          NOT NULL CHECK (initiated_by IN ('customer', 'automatic', 'dunning')),
    provider            text          NOT NULL,
    provider_charge_id  text,
    created_at          timestamptz   NOT NULL,
    completed_at        timestamptz,
    CHECK ((status = 'failed') = (failure_code IS NOT NULL)),
    CHECK ((status = 'pending') = (completed_at IS NULL)),
    CHECK ((status = 'succeeded') = (provider_charge_id IS NOT NULL)),
    CHECK (payment_method_id IS NOT NULL OR failure_code = 'no_payment_method')
);
CREATE UNIQUE INDEX payment_attempts_one_in_flight ON payment_attempts (invoice_id) WHERE status = 'pending';
CREATE UNIQUE INDEX payment_attempts_one_success ON payment_attempts (invoice_id) WHERE status = 'succeeded';
CREATE INDEX payment_attempts_invoice ON payment_attempts (invoice_id, created_at);
-- The reconciler's work list.
CREATE INDEX payment_attempts_pending ON payment_attempts (created_at) WHERE status = 'pending';

CREATE FUNCTION payment_attempts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'payment attempts are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'pending' OR NEW.status = 'pending'
       OR (NEW.id, NEW.invoice_id, NEW.customer_id, NEW.payment_method_id, NEW.amount_minor,
           NEW.currency, NEW.initiated_by, NEW.provider, NEW.created_at)
          IS DISTINCT FROM
          (OLD.id, OLD.invoice_id, OLD.customer_id, OLD.payment_method_id, OLD.amount_minor,
           OLD.currency, OLD.initiated_by, OLD.provider, OLD.created_at) THEN
        RAISE EXCEPTION 'payment attempt %: only pending → succeeded | failed may be recorded', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payment_attempts_guard BEFORE UPDATE OR DELETE ON payment_attempts
    FOR EACH ROW EXECUTE FUNCTION payment_attempts_guard();

-- Dunning of one invoice whose automatic charge failed on the customer's
-- side: where it is on the `dunning.retry_days` ladder (offsets from
-- started_at). The retries themselves are billing_jobs rows.
CREATE TABLE dunning_states (
    invoice_id       uuid        PRIMARY KEY REFERENCES invoices (id),
    subscription_id  uuid        REFERENCES subscriptions (id),
    status           text        NOT NULL CHECK (status IN ('active', 'recovered', 'exhausted')),
    started_at       timestamptz NOT NULL,
    retries_done     integer     NOT NULL DEFAULT 0 CHECK (retries_done >= 0),
    next_retry_at    timestamptz,
    ended_at         timestamptz,
    CHECK ((status = 'active') = (ended_at IS NULL)),
    CHECK (status = 'active' OR next_retry_at IS NULL)
);
CREATE INDEX dunning_states_subscription ON dunning_states (subscription_id) WHERE status = 'active';

-- ------------------------------------------------------------------ usage

-- Metered usage as reported, one row per (subscription, caller's event
-- id): a replay hits the unique key and is not counted again. invoice_id
-- is NULL until an invoice claims the row (`UPDATE … SET invoice_id = $1
-- WHERE subscription_id = $2 AND invoice_id IS NULL AND occurred_at < $cut
-- RETURNING quantity`, under the subscription's row lock); rows are never
-- deleted, so Σ quantity = Σ billed usage-line quantities + Σ unbilled,
-- always. Late rows (occurred_at in an already billed period) are simply
-- still unbilled and go on the next invoice.
CREATE TABLE usage_records (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  uuid        NOT NULL REFERENCES subscriptions (id),
    event_id         text        NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    quantity         bigint      NOT NULL CHECK (quantity BETWEEN 1 AND 1000000000),
    -- The record's `timestamp` in the API: when the usage happened.
    occurred_at      timestamptz NOT NULL,
    -- When RecordUsage accepted it (service clock).
    recorded_at      timestamptz NOT NULL,
    invoice_id       uuid        REFERENCES invoices (id),
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX usage_records_unbilled ON usage_records (subscription_id, occurred_at) WHERE invoice_id IS NULL;
CREATE INDEX usage_records_invoice ON usage_records (invoice_id) WHERE invoice_id IS NOT NULL;

CREATE FUNCTION usage_records_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'usage records are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.invoice_id IS NOT NULL OR NEW.invoice_id IS NULL
       OR (NEW.id, NEW.subscription_id, NEW.event_id, NEW.quantity, NEW.occurred_at, NEW.recorded_at)
          IS DISTINCT FROM
          (OLD.id, OLD.subscription_id, OLD.event_id, OLD.quantity, OLD.occurred_at, OLD.recorded_at) THEN
        RAISE EXCEPTION 'usage record %: only an unbilled record can be claimed by an invoice, once', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER usage_records_guard BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION usage_records_guard();

-- ----------------------------------------------------------------- ledger

-- Double-entry ledger (chart of accounts and the entries of every
-- operation: docs/services/billing.md). A transaction groups the entries
-- of one business event; the partial unique indexes make each event post
-- once (one finalization per invoice, one posting per successful payment),
-- whatever retries happen above. Append-only.
CREATE TABLE ledger_transactions (
    id                       uuid        PRIMARY KEY,
    kind                     text        NOT NULL CHECK (kind IN ('invoice_finalized', 'payment_succeeded',
                                 'revenue_recognized', 'invoice_voided', 'invoice_written_off',
                                 'credit_note', 'refund')),
    invoice_id               uuid        REFERENCES invoices (id),
    payment_attempt_id       uuid        REFERENCES payment_attempts (id),
    subscription_id          uuid        REFERENCES subscriptions (id),
    reverses_transaction_id  uuid        UNIQUE REFERENCES ledger_transactions (id),
    description              text        NOT NULL DEFAULT '',
    posted_at                timestamptz NOT NULL,
    CHECK ((kind = 'invoice_voided') = (reverses_transaction_id IS NOT NULL)),
    CHECK (kind <> 'payment_succeeded' OR payment_attempt_id IS NOT NULL),
    CHECK (kind NOT IN ('invoice_finalized', 'invoice_voided', 'invoice_written_off') OR invoice_id IS NOT NULL)
);
CREATE UNIQUE INDEX ledger_transactions_invoice_once ON ledger_transactions (kind, invoice_id)
    WHERE kind IN ('invoice_finalized', 'invoice_voided', 'invoice_written_off');
CREATE UNIQUE INDEX ledger_transactions_payment_once ON ledger_transactions (payment_attempt_id)
    WHERE kind = 'payment_succeeded';
CREATE INDEX ledger_transactions_invoice ON ledger_transactions (invoice_id) WHERE invoice_id IS NOT NULL;

-- The entries: signed amounts, debit positive, credit negative; never 0.
-- Customer accounts carry customer_id, deferred revenue its subscription
-- (its per-subscription subledger). Balances are sums (view below).
CREATE TABLE ledger_entries (
    id               uuid          PRIMARY KEY,
    -- Posting order, for paging and audits.
    seq              bigint        GENERATED ALWAYS AS IDENTITY UNIQUE,
    transaction_id   uuid          NOT NULL REFERENCES ledger_transactions (id),
    account          text          NOT NULL CHECK (account IN ('accounts_receivable', 'customer_credit',
                         'deferred_revenue', 'revenue_subscriptions', 'revenue_usage',
                         'provider_clearing', 'bad_debt')),
    customer_id      uuid          REFERENCES customers (id),
    subscription_id  uuid          REFERENCES subscriptions (id),
    currency         currency_code NOT NULL REFERENCES currencies (code),
    amount_minor     bigint        NOT NULL CHECK (amount_minor <> 0),
    posted_at        timestamptz   NOT NULL,
    CHECK ((account IN ('accounts_receivable', 'customer_credit')) = (customer_id IS NOT NULL)),
    CHECK ((account = 'deferred_revenue') = (subscription_id IS NOT NULL))
);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account, currency, seq);
CREATE INDEX ledger_entries_customer ON ledger_entries (customer_id, account, seq) WHERE customer_id IS NOT NULL;
CREATE INDEX ledger_entries_deferred ON ledger_entries (subscription_id) WHERE account = 'deferred_revenue';

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% on %): post a reversing transaction instead', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- At commit: every transaction touched has at least two entries and sums to
-- zero in each currency. Deferred, because entries are inserted one by one;
-- fired by new entries and by new transactions (so an empty transaction
-- cannot commit either).
CREATE FUNCTION ledger_assert_balanced(txn uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    entries integer;
    unbalanced record;
BEGIN
    SELECT count(*) INTO entries FROM ledger_entries WHERE transaction_id = txn;
    IF entries < 2 THEN
        RAISE EXCEPTION 'ledger transaction % has % entries; at least 2 are needed', txn, entries
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT currency, sum(amount_minor) AS total INTO unbalanced
      FROM ledger_entries WHERE transaction_id = txn
     GROUP BY currency HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % % off', txn, unbalanced.total, unbalanced.currency
            USING ERRCODE = 'check_violation';
    END IF;
END $$;

CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.transaction_id);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entries_balanced();

CREATE FUNCTION ledger_transactions_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.id);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transactions_balanced();

-- Balances, derived: never stored, so they cannot disagree with the entries.
CREATE VIEW ledger_balances AS
SELECT account, customer_id, subscription_id, currency, sum(amount_minor)::bigint AS balance_minor
  FROM ledger_entries
 GROUP BY account, customer_id, subscription_id, currency;

-- ------------------------------------------------------------ idempotency

-- One row per (caller, idempotency-key) for 24 h (expires_at, from the
-- service clock). Claimed in its own short transaction as `in_progress`
-- with `ON CONFLICT DO NOTHING` before any work; the business transaction
-- that finishes the request sets `completed` and the stored response in
-- the same commit as its effects. Multi-step requests (a provider call
-- between two transactions) record `recovery_point` + `resource_id` in
-- the commit of each step, so a retry after a crash resumes instead of
-- redoing. `locked_until` is the lease of the execution in progress; a
-- request finding the lease live gets ABORTED, finding it lapsed takes it
-- over.
CREATE TABLE idempotency_keys (
    caller            text        NOT NULL,
    key               text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- Full gRPC method, e.g. `/tenx.billing.v1.BillingService/PayInvoice`.
    method            text        NOT NULL,
    -- SHA-256 of method + the request re-encoded canonically.
    request_hash      bytea       NOT NULL CHECK (length(request_hash) = 32),
    status            text        NOT NULL CHECK (status IN ('in_progress', 'completed')),
    recovery_point    text        NOT NULL DEFAULT 'started',
    resource_id       uuid,
    locked_until      timestamptz,
    -- gRPC code of the stored answer (0 = OK), its message, and either the
    -- encoded response message (OK) or the encoded google.rpc.Status.
    response_code     smallint,
    response_message  text,
    response_body     bytea,
    created_at        timestamptz NOT NULL,
    completed_at      timestamptz,
    expires_at        timestamptz NOT NULL,
    PRIMARY KEY (caller, key),
    CHECK ((status = 'completed') = (response_code IS NOT NULL AND response_body IS NOT NULL AND completed_at IS NOT NULL)),
    CHECK (status = 'completed' OR locked_until IS NOT NULL)
);
-- The sweeper deletes expired rows in batches.
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- ------------------------------------------------------------------- jobs

-- Delayed work: period boundaries (renewal, trial end, scheduled cancel
-- or plan change), charging a new invoice, dunning retries, expiry of
-- incomplete subscriptions, reconciling timed-out payments. Any number of
-- instances claim due rows with `FOR UPDATE SKIP LOCKED` and a lease
-- (locked_by/locked_until); the job's effects and `status = 'done'` commit
-- together, so a crash leaves the job pending and another instance redoes
-- it (effects are also guarded by state checks and unique keys).
-- dedupe_key makes "one job per boundary" a constraint: e.g.
-- `period_end:<subscription>:<period end, RFC 3339>`, `charge:<invoice>`,
-- `dunning:<invoice>:<retry n>`, `incomplete_expiry:<subscription>`,
-- `reconcile:<payment attempt>`.
CREATE TABLE billing_jobs (
    id                  uuid        PRIMARY KEY,
    kind                text        NOT NULL CHECK (kind IN ('period_end', 'charge_invoice', 'dunning_retry',
                            'incomplete_expiry', 'payment_reconcile')),
    dedupe_key          text        NOT NULL UNIQUE,
    subscription_id     uuid        REFERENCES subscriptions (id),
    invoice_id          uuid        REFERENCES invoices (id),
    payment_attempt_id  uuid        REFERENCES payment_attempts (id),
    run_at              timestamptz NOT NULL,
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'canceled')),
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_by           text,
    locked_until        timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL,
    finished_at         timestamptz,
    CHECK ((status = 'pending') = (finished_at IS NULL)),
    CHECK (kind NOT IN ('period_end', 'incomplete_expiry') OR subscription_id IS NOT NULL),
    CHECK (kind NOT IN ('charge_invoice', 'dunning_retry') OR invoice_id IS NOT NULL),
    CHECK (kind <> 'payment_reconcile' OR payment_attempt_id IS NOT NULL)
);
-- The claim: WHERE status = 'pending' AND run_at <= $now AND
-- (locked_until IS NULL OR locked_until < $now) ORDER BY run_at.
CREATE INDEX billing_jobs_due ON billing_jobs (run_at) WHERE status = 'pending';
CREATE INDEX billing_jobs_subscription ON billing_jobs (subscription_id) WHERE status = 'pending';
CREATE INDEX billing_jobs_invoice ON billing_jobs (invoice_id) WHERE status = 'pending';
